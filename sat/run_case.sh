# Shared body of the top-level run_*.sh scripts (sourced, not run).
# Usage from a run script:  run_case <entry script in sat/> <default case yaml> "$@"
# Arguments: [CASE.yaml] [--model 2b|5b] [--tiny] [key=value overrides, e.g. args.seed=7]
run_case() {
    local script=$1 case_yaml=$2
    shift 2
    local tiny="" overrides=() model=2b model_next=""
    for arg in "$@"; do
        if [ -n "$model_next" ]; then model=$arg; model_next=""; continue; fi
        case "$arg" in
            --model) model_next=1 ;;
            --model=*) model=${arg#--model=} ;;
            --tiny) tiny="--tiny" ;;
            *.yaml) case_yaml="$arg" ;;
            *) overrides+=("$arg") ;;
        esac
    done
    if [ ! -f "configs/cogvideox_${model}.yaml" ]; then
        echo "error: unknown model '${model}' (--model); choices: 2b, 5b" >&2
        return 2
    fi
    export WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1
    # Short OpenMP spin-waits: CPU runs stay fast when other processes share the cores (measured on 2 cores:
    # a tiny forward takes 4.1 s with libgomp's default spinning next to a second job, 0.1 s with this).
    export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-1000}"
    local cmd=(python "sat/$script" --base "configs/cogvideox_${model}.yaml" configs/inference.yaml
               --custom-config "$case_yaml" ${tiny:+"$tiny"} "${overrides[@]}")
    echo "${cmd[*]}"
    "${cmd[@]}"
}
