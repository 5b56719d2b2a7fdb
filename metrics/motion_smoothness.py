"""Motion smoothness as VBench defines it (docs/metrics.md, "Motion smoothness"): AMT-S predicts each odd frame
from its even neighbours; score = (255 - mean absolute difference) / 255.

    python metrics/motion_smoothness.py --video_path RESULTS_FOLDER_OR_VIDEO [--target_seed 42] [--amt_path amt-s.pth]

Writes evaluation_results_motion/motion_smoothness_<time>.json (or --out): each video's score and the average, in
VBench's per-video form. The AMT-S weights are VBench's amt-s.pth (default checkpoints/amt-s.pth, or where VBench
keeps it, ~/.cache/vbench/amt_model/amt-s.pth); nothing is downloaded.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sat"))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.metrics.command_line import (OneLineParser, add_device_option, metric_device, timestamped_path,  # noqa: E402
                                          write_json)
from ditctrl.metrics.model_files import amt_checkpoint  # noqa: E402
from ditctrl.metrics.video_inputs import check_videos, find_videos, read_checked  # noqa: E402
from ditctrl.runs import user_errors  # noqa: E402


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video_path", required=True, help="a results folder (walked) or one video")
    parser.add_argument("--target_seed", type=int, help="only videos inside a folder named seed_<n>")
    parser.add_argument("--amt_path", help="VBench's amt-s.pth (default: checkpoints/amt-s.pth, then "
                                           "~/.cache/vbench/amt_model/amt-s.pth)")
    parser.add_argument("--batch_size", type=int, default=4, help="frame pairs per AMT-S forward")
    add_device_option(parser)
    parser.add_argument("--out", help="result JSON (default evaluation_results_motion/motion_smoothness_<time>.json)")
    return parser.parse_args(argv)


def main(argv=None):
    options = parse(argv)
    with user_errors():
        if options.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {options.batch_size}")
        checkpoint = amt_checkpoint(options.amt_path)
        videos = find_videos(options.video_path, options.target_seed)
        check_videos(videos)
        device = metric_device(options.device)
        from ditctrl.metrics.motion_smoothness import load_amt_s, motion_smoothness
        model = load_amt_s(checkpoint, device)  # a corrupt or foreign file is one line too
    details = []
    for index, path in enumerate(videos, 1):
        score = motion_smoothness(model, read_checked(path).frames, options.batch_size, f"AMT-S {index}/{len(videos)}")
        print(f"{path}: {score:.6f}")
        details.append({"video_path": path, "video_results": score})
    average = sum(detail["video_results"] for detail in details) / len(details)
    out = write_json(options.out or timestamped_path("evaluation_results_motion", "motion_smoothness"),
                     {"motion_smoothness": {"average_score": average, "details": details}})
    print(f"score: {average:.6f} over {len(details)} video(s)")
    print(f"Results saved to {out}")
    return average


if __name__ == "__main__":
    guarded(main)
