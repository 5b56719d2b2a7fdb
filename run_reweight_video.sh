#!/usr/bin/env bash
# Attention reweight editing.
#   bash run_reweight_video.sh [CASE.yaml] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...]
# Without --tiny it needs the CogVideoX weights (README.md, "Download the weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video_edit.py inference_case_configs/reweight/balloon_red_0.yaml "$@"
