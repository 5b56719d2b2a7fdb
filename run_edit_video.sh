#!/usr/bin/env bash
# Word-swap video editing (KV-sharing, no blending).
#   bash run_edit_video.sh [CASE.yaml] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...]
# Without --tiny it needs the CogVideoX weights (README.md, "Download the weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video_edit.py inference_case_configs/edit/bus_truck.yaml "$@"
