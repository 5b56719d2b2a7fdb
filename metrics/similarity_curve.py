"""The similarity of adjacent frames over time for one or several videos on one plot (docs/metrics.md,
"Similarity curve"): e.g. DiTCtrl's long video and its isolated baseline.

    python metrics/similarity_curve.py --video_path OUT/MultiPrompt_frames145.mp4 OUT/isolated/all_frames147.mp4 \
        [--labels DiTCtrl Isolated] [--result_path similarity.png]

Each curve is the CLIP similarity of frames i and i+1 (the s_i of CSCV; the legend gives each video's CSCV). The
prompt parts and transition windows of the first video that has a params.yaml are shaded behind the curves.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sat"))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.metrics.command_line import (OneLineParser, add_clip_options, add_device_option, checked_clip,  # noqa: E402
                                          metric_device)
from ditctrl.metrics.prompt_parts import parts_from_params  # noqa: E402
from ditctrl.metrics.video_inputs import check_videos, read_checked  # noqa: E402
from ditctrl.runs import user_errors  # noqa: E402


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video_path", nargs="+", required=True, help="one or several videos")
    parser.add_argument("--labels", nargs="+", help="one legend label per video (default: the file names)")
    parser.add_argument("--result_path", default="similarity.png", help="the PNG to write (default similarity.png)")
    add_clip_options(parser)
    add_device_option(parser)
    return parser.parse_args(argv)


def main(argv=None):
    options = parse(argv)
    with user_errors():
        labels = options.labels or [os.path.basename(path) for path in options.video_path]
        if len(labels) != len(options.video_path):
            raise ValueError(f"--labels gives {len(labels)} label(s) for {len(options.video_path)} video(s)")
        folder = checked_clip(options)
        counts = check_videos(options.video_path)
        parts = next((found for found in (parts_from_params(path, count) for path, count in counts.items())
                      if found is not None), None)
        device = metric_device(options.device)
    from ditctrl.metrics.clip_features import frame_features, load_clip_vision
    from ditctrl.metrics.cscv import adjacent_similarities, cscv_from_similarities
    from ditctrl.metrics.plots import similarity_figure

    model = load_clip_vision(folder, device)
    curves = []
    for label, path in zip(labels, options.video_path):
        features = frame_features(model, read_checked(path).frames, options.image_size, options.batch_size, label)
        similarities = adjacent_similarities(features.numpy())
        curves.append((f"{label} (CSCV {100 * cscv_from_similarities(similarities):.2f})", similarities))
    print(f"wrote {similarity_figure(curves, parts, options.result_path)}")
    return curves


if __name__ == "__main__":
    guarded(main)
