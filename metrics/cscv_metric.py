"""CSCV of generated videos, as the original DiTCtrl's metrics/cscv_metric.py (docs/metrics.md, "CSCV").

    python metrics/cscv_metric.py --video_path RESULTS_FOLDER --target_seed 42 [--extractor_path CLIP_FOLDER]

Scores every video below --video_path inside a folder named seed_<target_seed> (every video when no seed is given;
--video_path may also be one file) and writes evaluation_results_cscv/cscv_<time>.json (or --out) with each
video's score and their average, in the original's form. CLIP runs on --device in batches of --batch_size frames.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sat"))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.metrics.command_line import (OneLineParser, add_clip_options, add_device_option, checked_clip,  # noqa: E402
                                          metric_device, timestamped_path, write_json)
from ditctrl.metrics.video_inputs import check_videos, find_videos, read_checked  # noqa: E402
from ditctrl.runs import user_errors  # noqa: E402


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video_path", required=True, help="a results folder (walked) or one video")
    parser.add_argument("--target_seed", type=int, help="only videos inside a folder named seed_<n>")
    add_clip_options(parser)
    add_device_option(parser)
    parser.add_argument("--out", help="result JSON (default evaluation_results_cscv/cscv_<time>.json)")
    return parser.parse_args(argv)


def main(argv=None):
    options = parse(argv)
    with user_errors():
        folder = checked_clip(options)
        videos = find_videos(options.video_path, options.target_seed)
        check_videos(videos)
        device = metric_device(options.device)
    from ditctrl.metrics.clip_features import frame_features, load_clip_vision
    from ditctrl.metrics.cscv import cscv_score

    model = load_clip_vision(folder, device)
    details = []
    for index, path in enumerate(videos, 1):
        print(f"found video file: {path}")
        features = frame_features(model, read_checked(path).frames, options.image_size, options.batch_size,
                                  f"CLIP {index}/{len(videos)}")
        details.append({"video_path": path, "video_results": cscv_score(features)})
    average = sum(detail["video_results"] for detail in details) / len(details)
    out = write_json(options.out or timestamped_path("evaluation_results_cscv", "cscv"),
                     {"new_metric": {"average_score": average, "details": details}})
    print("file_path: ", options.video_path)
    print("length: ", len(details))
    print("target_seed: ", options.target_seed)
    print("score: ", average)
    print(f"Results saved to {out}")
    return average


if __name__ == "__main__":
    guarded(main)
