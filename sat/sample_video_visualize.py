"""Attention-map visualisation of a single-prompt CogVideoX generation.

    python sat/sample_video_visualize.py --base configs/cogvideox_2b.yaml configs/inference.yaml \
        --custom-config inference_case_configs/visualization_configs/puppy_ball.yaml [--tiny]

Writes `{output_dir}/visualization_frames49.mp4`, the maps of the configured steps, layers and
tokens under `{output_dir}/attn_map/step{s}_layer{l}/` and one overview figure
`{output_dir}/attn_map/overview.png`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.runs import run_entry  # noqa: E402


def main(argv=None):
    return run_entry("sample_video_visualize", argv)


if __name__ == "__main__":
    guarded(main)
