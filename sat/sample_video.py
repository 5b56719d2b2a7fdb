"""DiTCtrl multi-prompt (and single-prompt) long video generation on CogVideoX-2B.

    python sat/sample_video.py --base configs/cogvideox_2b.yaml configs/inference.yaml \
        --custom-config inference_case_configs/multi_prompts/rose.yaml [--tiny]

Writes `{output_dir}/MultiPrompt_frames{N}.mp4` (one per controller in `adaln_mixin_names`; with
several, the controller name is part of the file name), `params.yaml` with the resolved config, and
with `is_run_isolated: True` each prompt's own clip under `isolated/`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.runs import run_entry  # noqa: E402


def main(argv=None):
    return run_entry("sample_video", argv)


if __name__ == "__main__":
    guarded(main)
