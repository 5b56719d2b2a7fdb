# Shared body of the top-level run_*.sh scripts (sourced, not run).
# Usage from a run script:  run_case <entry script in sat/> <default case yaml> "$@"
# Arguments: [CASE.yaml] [--tiny] [key=value overrides, e.g. args.seed=7]
run_case() {
    local script=$1 case_yaml=$2
    shift 2
    local tiny="" overrides=()
    for arg in "$@"; do
        case "$arg" in
            --tiny) tiny="--tiny" ;;
            *.yaml) case_yaml="$arg" ;;
            *) overrides+=("$arg") ;;
        esac
    done
    export WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1
    # Short OpenMP spin-waits: CPU runs stay fast when other processes share the cores (measured on 2 cores:
    # a tiny forward takes 4.1 s with libgomp's default spinning next to a second job, 0.1 s with this).
    export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-1000}"
    local cmd=(python "sat/$script" --base configs/cogvideox_2b.yaml configs/inference.yaml
               --custom-config "$case_yaml" ${tiny:+"$tiny"} "${overrides[@]}")
    echo "${cmd[*]}"
    "${cmd[@]}"
}
