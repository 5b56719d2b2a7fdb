#!/usr/bin/env bash
# Attention-map visualisation.
#   bash run_visualize.sh [CASE.yaml] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...]
# Without --tiny it needs the CogVideoX weights (README.md, "Download the weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video_visualize.py inference_case_configs/visualization_configs/puppy_ball.yaml "$@"
