#!/usr/bin/env bash
# Multi-prompt long video (DiTCtrl).
#   bash run_multi_prompt.sh [CASE.yaml] [--tiny] [key=value ...]
# Without --tiny it needs the CogVideoX-2B weights (README.md, "Download CogVideoX-2B weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video.py inference_case_configs/multi_prompts/rose.yaml "$@"
