"""t-SNE of a video's CLIP frame features, as the original DiTCtrl's metrics/visualize_tsne.py (docs/metrics.md,
"t-SNE of the frames").

    python metrics/visualize_tsne.py --video_path VIDEO.mp4 [--result_path tsne_plot.png] [--extractor_path CLIP]

sklearn's TSNE (2 components, random_state 42) of the frames' CLIP pooler outputs, drawn as the original's scatter.
When the run's params.yaml is beside the video (or above its isolated/ folder), the points are coloured by the
prompt that owns each frame, joined in frame order, and the frames of transition windows are drawn hollow.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sat"))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.metrics.command_line import (OneLineParser, add_clip_options, add_device_option, checked_clip,  # noqa: E402
                                          metric_device)
from ditctrl.metrics.prompt_parts import parts_from_params  # noqa: E402
from ditctrl.metrics.video_inputs import read_checked  # noqa: E402
from ditctrl.runs import user_errors  # noqa: E402

PERPLEXITY = 30  # sklearn's default, as the original; at most frames - 1 for short videos
RANDOM_STATE = 42


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video_path", required=True, help="one video")
    parser.add_argument("--result_path", default="tsne_plot.png", help="the PNG to write (default tsne_plot.png)")
    add_clip_options(parser)
    add_device_option(parser)
    return parser.parse_args(argv)


def main(argv=None):
    options = parse(argv)
    with user_errors():
        folder = checked_clip(options)
        frames = read_checked(options.video_path).frames
        parts = parts_from_params(options.video_path, len(frames))
        device = metric_device(options.device)
    from sklearn.manifold import TSNE

    from ditctrl.metrics.clip_features import frame_features, load_clip_vision
    from ditctrl.metrics.plots import tsne_figure

    features = frame_features(load_clip_vision(folder, device), frames, options.image_size, options.batch_size, "CLIP")
    tsne = TSNE(n_components=2, random_state=RANDOM_STATE, perplexity=min(PERPLEXITY, len(frames) - 1))
    points = tsne.fit_transform(features.numpy())
    print(f"wrote {tsne_figure(points, parts, options.result_path)}"
          + ("" if parts is None else f" ({len(parts.prompts)} prompt parts from params.yaml)"))
    return points


if __name__ == "__main__":
    guarded(main)
