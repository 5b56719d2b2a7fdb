#!/usr/bin/env bash
# Word-swap video editing (KV-sharing, no blending).
#   bash run_edit_video.sh [CASE.yaml] [--tiny] [key=value ...]
# Without --tiny it needs the CogVideoX-2B weights (README.md, "Download CogVideoX-2B weights").
set -euo pipefail
cd "$(dirname "$0")"
source sat/run_case.sh
run_case sample_video_edit.py inference_case_configs/edit/bus_truck.yaml "$@"
