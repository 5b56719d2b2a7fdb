#!/usr/bin/env bash
# t-SNE of a video's CLIP frame features, as the original's run_tsne.sh.
#   bash metrics/run_tsne.sh VIDEO.mp4 [RESULT.png] [visualize_tsne.py options, e.g. --extractor_path DIR]
set -euo pipefail
(($# > 0)) || { echo "error: usage: bash metrics/run_tsne.sh VIDEO [RESULT.png] [OPTIONS]" >&2; exit 2; }
video=$1
shift
result=tsne_plot.png
if (($# > 0)) && [[ "$1" != -* ]]; then result=$1; shift; fi
python "$(dirname "$0")/visualize_tsne.py" --video_path "$video" --result_path "$result" "$@"
