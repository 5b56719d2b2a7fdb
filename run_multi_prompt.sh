#!/usr/bin/env bash
# Multi-prompt long video (DiTCtrl).
#   bash run_multi_prompt.sh [CASE.yaml] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...]
# Without --tiny it needs the CogVideoX weights (README.md, "Download the weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video.py inference_case_configs/multi_prompts/rose.yaml "$@"
