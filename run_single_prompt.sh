#!/usr/bin/env bash
# Single-prompt long video (one prompt repeated, DiTCtrl).
#   bash run_single_prompt.sh [CASE.yaml] [--tiny] [key=value ...]
# Without --tiny it needs the CogVideoX-2B weights (README.md, "Download CogVideoX-2B weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video.py inference_case_configs/single_prompt/jellyfish.yaml "$@"
