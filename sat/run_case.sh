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
    local cmd=(python "sat/$script" --base configs/cogvideox_2b.yaml configs/inference.yaml
               --custom-config "$case_yaml" ${tiny:+"$tiny"} "${overrides[@]}")
    echo "${cmd[*]}"
    "${cmd[@]}"
}
