#!/usr/bin/env bash
# CSCV of every video under a results folder, once per seed folder, as the original's run_cscv.sh.
#   bash metrics/run_cscv.sh RESULTS_FOLDER [SEED ...] [-- cscv_metric.py options, e.g. --extractor_path DIR]
# Without seeds: every video under RESULTS_FOLDER. Each run writes evaluation_results_cscv/cscv_<time>.json here.
set -euo pipefail
(($# > 0)) || { echo "error: usage: bash metrics/run_cscv.sh RESULTS_FOLDER [SEED ...] [-- OPTIONS]" >&2; exit 2; }
video_path=$1
shift
seeds=()
while (($# > 0)) && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --
script="$(dirname "$0")/cscv_metric.py"
if ((${#seeds[@]} == 0)); then
    echo "Processing path: $video_path"
    python "$script" --video_path "$video_path" "$@"
fi
for seed in "${seeds[@]}"; do
    echo "Processing path: $video_path, seed: $seed"
    python "$script" --video_path "$video_path" --target_seed "$seed" "$@"
done
