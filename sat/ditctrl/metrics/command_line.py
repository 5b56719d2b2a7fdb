"""What the metric scripts share on their command lines: one-line errors, the CLIP and device options, result
files named like the original's (`<folder>/<stem>_<time>.json`)."""
import argparse
import json
import os
import sys
import time

from ..output_files import write_text
from .model_files import DEFAULT_CLIP, clip_folder, clip_image_size, read_clip_config

FEATURE_EXTRACTORS = ("clip",)
DEFAULT_IMAGE_SIZE = 224


class OneLineParser(argparse.ArgumentParser):
    """argparse with the project's bad-input form: one line `error: ...` on stderr, exit status 2."""

    def error(self, message):
        print(f"error: {message} (--help lists the options)", file=sys.stderr)
        sys.exit(2)


def add_clip_options(parser: argparse.ArgumentParser) -> None:
    """The original's feature-extractor options, and the frames per CLIP forward."""
    parser.add_argument("--feature_extractor", default="clip",
                        help="clip (the original's dino and resnet options needed torchvision; they are not here)")
    parser.add_argument("--extractor_path", default=DEFAULT_CLIP,
                        help="CLIP weights: a local folder, or a Hugging Face id already in the local cache "
                             f"(default {DEFAULT_CLIP}; nothing is downloaded)")
    parser.add_argument("--feature_dimension", type=int, default=768,
                        help="accepted for the original's command lines; the feature size comes from the model")
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help="side of the ADM centre crop; must be the CLIP model's input size")
    parser.add_argument("--batch_size", type=int, default=32, help="frames per CLIP forward")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU, else the CPU), cpu, "
                                                         "cuda or cuda:<index>")


def checked_clip(options, with_text: bool = False) -> str:
    """The CLIP folder the options name, checked (weights present, crop size = the model's input size)."""
    if options.feature_extractor not in FEATURE_EXTRACTORS:
        raise ValueError(f"--feature_extractor {options.feature_extractor} is not available: only clip (the "
                         "original's dino and resnet need torchvision)")
    if options.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {options.batch_size}")
    folder = clip_folder(options.extractor_path, with_text)
    expected = clip_image_size(read_clip_config(folder))
    if options.image_size != expected:
        raise ValueError(f"--image_size {options.image_size} does not fit the CLIP model in {folder}: it takes "
                         f"{expected}x{expected} images")
    return folder


def metric_device(name: str) -> str:
    from ..config import resolve_device

    try:
        return resolve_device(name)
    except ValueError as error:
        raise ValueError(str(error).replace("args.device", "--device")) from None


def timestamped_path(folder: str, stem: str) -> str:
    """`folder/stem_<date>-<time>.json`, the original's name for a result file."""
    return os.path.join(folder, f"{stem}_{time.strftime('%Y-%m-%d-%H:%M:%S')}.json")


def write_json(path: str, data) -> str:
    return write_text(path, json.dumps(data, indent=4) + "\n")
