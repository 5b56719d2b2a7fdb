# Shared body of the top-level run_*.sh scripts (sourced, not run, right after they cd to the repository root).
# Usage from a run script:  run_case <entry script in sat/> <default case file> "$@"
# Arguments: [CASE_FILE] [--model 2b|5b] [--tiny] [--gpus N] [key=value overrides, e.g. args.seed=7] [--prompts P1 P2 ...]
# --gpus N (N > 1) starts N processes on this machine with sat/launch_ranks.py (one per GPU; gloo processes on a CPU).
# --help shows the entry script's options. Any other option, or --model / --gpus without a value, is one error line.
# CASE_FILE is any argument that is neither an option nor key=value (any name, not only *.yaml); a relative
# path is taken from the caller's folder when it exists there, else from the repository root. A second case file,
# --model or --gpus is an error: only one of them could run.
# Everything after --prompts is a prompt (the entry script refuses a key=value there, with a hint).
run_case() {
    local script=$1 case_file=$2
    shift 2
    local caller_dir=${OLDPWD:-$PWD}  # set by the run script's cd
    local tiny="" overrides=() rest=() model=2b gpus=1
    local -A given=()
    once() {  # record what $1 (an option or "case file") was given as; refuse a second one
        if [ -n "${given[$1]+set}" ]; then
            echo "error: more than one $1 ('${given[$1]}', '$2'): a run takes one" >&2
            return 2
        fi
        given[$1]=$2
    }
    while [ $# -gt 0 ]; do
        case "$1" in
            --model) (($# > 1)) || { echo "error: --model needs a value: --model 2b|5b" >&2; return 2; }
                once --model "$2" || return; model=$2; shift ;;
            --model=*) once --model "${1#--model=}" || return; model=${1#--model=} ;;
            --tiny) tiny="--tiny" ;;
            --gpus) (($# > 1)) || { echo "error: --gpus needs a value: --gpus N, the number of processes" >&2
                                    return 2; }
                once --gpus "$2" || return; gpus=$2; shift ;;
            --gpus=*) once --gpus "${1#--gpus=}" || return; gpus=${1#--gpus=} ;;
            --prompts|--) rest=("$@"); break ;;
            -h|--help) python "sat/$script" --help; return ;;
            -*) echo "error: unknown option '$1'; the run scripts take [CASE_FILE] [--model 2b|5b] [--tiny]" \
                     "[--gpus N] [key=value ...] [--prompts P1 P2 ...] [--help]" >&2
                return 2 ;;
            *=*) if [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_.-]*= ]]; then overrides+=("$1")
                 else once "case file" "$1" || return; case_file=$1; fi ;;
            *) once "case file" "$1" || return; case_file=$1 ;;
        esac
        shift
    done
    if [ "$model" != 2b ] && [ "$model" != 5b ]; then  # configs/ holds other files too (cogvideox_tiny.yaml)
        local hint=""
        [ "$model" = tiny ] && hint="; --tiny selects the tiny random-weight model of either"
        echo "error: unknown model '${model}' (--model); choices: 2b, 5b${hint}" >&2
        return 2
    fi
    if ! [[ "$gpus" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: --gpus takes a whole number of processes >= 1, got '${gpus}'" >&2
        return 2
    fi
    if [[ "$case_file" != /* && -e "$caller_dir/$case_file" ]]; then
        case_file="$caller_dir/$case_file"
    fi
    local launcher=(python)
    if [ "$gpus" != 1 ]; then  # compared as text: shell arithmetic would wrap a count beyond 64 bits
        launcher=(python sat/launch_ranks.py "$gpus")
    else
        export WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1
    fi
    local cmd=("${launcher[@]}" "sat/$script" --base "configs/cogvideox_${model}.yaml" configs/inference.yaml
               --custom-config "$case_file" ${tiny:+"$tiny"} "${overrides[@]}" "${rest[@]}")
    shell_quoted "${cmd[@]}" 2>/dev/null || true  # a stdout that cannot be written (a full device) must not stop the run
    "${cmd[@]}"
}

# Print the words as one command line a shell reads back as the same words: a word with anything but letters,
# digits and _ . / = : , + @ % - is put in single quotes (a quote inside as '\'').
shell_quoted() {
    local word line=()
    for word in "$@"; do
        if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
            line+=("$word")
        else
            line+=("'${word//\'/\'\\\'\'}'")
        fi
    done
    echo "${line[*]}"
}
