#!/usr/bin/env bash
# The batch comparison: every case with DiTCtrl and the isolated baseline, scored; results.csv, results.md, results.png.
#   bash metrics/run_benchmark.sh CASES [CASES ...] [--out DIR] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...]
# e.g. bash metrics/run_benchmark.sh inference_case_configs/prompt_sets --gpus 4
# Needs the CLIP and AMT-S weights (docs/metrics.md, "Weights"). The exit status is the number of failed cases.
set -uo pipefail
export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-1000}"  # short OpenMP spin-waits: CPU runs sharing the cores stay fast
exec python "$(dirname "$0")/batch_benchmark.py" "$@"
