"""Video editing with DiTCtrl: word swap (KV-sharing) and attention reweighting, one 49-frame clip.

    python sat/sample_video_edit.py --base configs/cogvideox_2b.yaml configs/inference.yaml \
        --custom-config inference_case_configs/edit/bus_truck.yaml [--tiny]

Two prompts (source, target) are sampled as one batch from the same noise. Writes
`{output_dir}/editing_frames49.mp4` (source left, edited target right) and
`editing_source_frames49.mp4` / `editing_target_frames49.mp4`, plus `params.yaml`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.runs import run_entry  # noqa: E402


def main(argv=None):
    return run_entry("sample_video_edit", argv)


if __name__ == "__main__":
    guarded(main)
