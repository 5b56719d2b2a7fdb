"""Text-video similarity per prompt (docs/metrics.md, "Text similarity"): CLIP text-image cosine x 100 between each
prompt and the frames of its own part of the video.

    python metrics/text_similarity.py --video_path RESULTS_FOLDER_OR_VIDEO [--target_seed 42] [--prompt "..."]

A video's prompts and their parts come from its run's params.yaml (beside the video, or above its isolated/
folder); a video without one needs --prompt, its one prompt. Writes evaluation_results_text/text_similarity_<time>.json
(or --out): each video's score (the mean over its prompts), each prompt's, and the average over the videos.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sat"))

from ditctrl.errors import guarded  # noqa: E402
from ditctrl.metrics.command_line import (OneLineParser, add_clip_options, add_device_option, checked_clip,  # noqa: E402
                                          metric_device, timestamped_path, write_json)
from ditctrl.metrics.prompt_parts import clip_sequence_parts, parts_from_params  # noqa: E402
from ditctrl.metrics.video_inputs import check_videos, find_videos, read_checked  # noqa: E402
from ditctrl.runs import user_errors  # noqa: E402


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video_path", required=True, help="a results folder (walked) or one video")
    parser.add_argument("--target_seed", type=int, help="only videos inside a folder named seed_<n>")
    parser.add_argument("--prompt", help="the prompt of a video that has no params.yaml (its whole length)")
    add_clip_options(parser)
    add_device_option(parser)
    parser.add_argument("--out", help="result JSON (default evaluation_results_text/text_similarity_<time>.json)")
    return parser.parse_args(argv)


def video_parts(path: str, frame_count: int, prompt: str | None):
    parts = parts_from_params(path, frame_count)
    if parts is None:
        if prompt is None:
            raise ValueError(f"no params.yaml describes {path}: give its prompt with --prompt")
        parts = clip_sequence_parts([prompt], frame_count)
    return parts


def main(argv=None):
    options = parse(argv)
    with user_errors():
        folder = checked_clip(options, with_text=True)
        videos = find_videos(options.video_path, options.target_seed)
        parts = {path: video_parts(path, count, options.prompt) for path, count in check_videos(videos).items()}
        device = metric_device(options.device)
    from ditctrl.metrics.clip_features import context_length, frame_features, load_clip, token_counts
    from ditctrl.metrics.text_similarity import cut_prompt_notes, video_text_similarity

    clip, tokenizer = load_clip(folder, device)
    details = []
    for index, path in enumerate(videos, 1):
        prompts = parts[path].prompts
        counts = token_counts(tokenizer, prompts)
        for note in cut_prompt_notes(prompts, counts, context_length(clip)):
            print(note)
        pooled = frame_features(clip, read_checked(path).frames, options.image_size, options.batch_size,
                                f"CLIP {index}/{len(videos)}")
        similarity = video_text_similarity(clip, tokenizer, pooled, parts[path])
        print(f"{path}: {similarity.video:.2f}")
        details.append({"video_path": path, "video_results": similarity.video, "prompts": [
            {"prompt": prompt, "score": score, "frames": len(frames), "clip_tokens": count,
             "cut_to": context_length(clip) if count > context_length(clip) else None}
            for prompt, score, frames, count in zip(prompts, similarity.per_prompt, parts[path].members, counts)]})
    average = sum(detail["video_results"] for detail in details) / len(details)
    out = write_json(options.out or timestamped_path("evaluation_results_text", "text_similarity"),
                     {"text_similarity": {"average_score": average, "details": details}})
    print(f"score: {average:.4f} over {len(details)} video(s)")
    print(f"Results saved to {out}")
    return average


if __name__ == "__main__":
    guarded(main)
