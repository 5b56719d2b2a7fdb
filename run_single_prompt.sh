#!/usr/bin/env bash
# Single-prompt long video (one prompt repeated, DiTCtrl).
#   bash run_single_prompt.sh [CASE.yaml] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...]
# Without --tiny it needs the CogVideoX weights (README.md, "Download the weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video.py inference_case_configs/single_prompt/jellyfish.yaml "$@"
