"""The user's own video as the model sees it: resampled to the model's frame rate, scaled and centre-cropped to its
size, cut to a frame count the VAE round-trips.

    frames = load_source_video("my.mp4", height=480, width=720)   # uint8 (F, 480, 720, 3), F = 49 at most

A video file (mp4, GIF, anything ffmpeg decodes) or a folder of frames (image files of one size, in natural
order: frame_2 before frame_10). Frames are decoded one at a time and only those the model needs are kept, each
scaled down at once, so a long or large video costs the memory of one decoded frame plus the kept ones.
Everything that is wrong with the input is one-line ValueError / FileNotFoundError before any model work.
"""
import contextlib
import os
import re
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from .output_files import first_line
from .video_io import TimedFrame, VideoStream, open_video

MODEL_FPS = 8            # CogVideoX was trained on 8 fps clips
MIN_FRAMES = 9           # 3 latent frames, the fewest the VAE decodes in its chunks
MAX_FRAME_PIXELS = 2**26  # 67 megapixels (8K is 33): one decoded frame then takes at most 200 MB
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
TIME_TOLERANCE = 1e-9    # seconds: a target time this close to halfway between two frames is a tie (earlier wins)


def usable_frame_count(available: int, wanted: int) -> int:
    """The most frames <= min(available, wanted) that the VAE encodes and decodes back: 4k+1 frames (k+1 latent
    frames) with k+1 odd, i.e. 8m+1 (9, 17, ..., 49); 0 when fewer than MIN_FRAMES are available."""
    count = min(available, wanted)
    return 0 if count < MIN_FRAMES else count - (count - 1) % 8


def cover_size(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int]:
    """(width, height) of a frame scaled, keeping its aspect ratio, to the smallest size covering the target."""
    scale = max(target_width / width, target_height / height)
    return max(target_width, round(width * scale)), max(target_height, round(height * scale))


def fit_frame(image: np.ndarray, target_width: int, target_height: int) -> np.ndarray:
    """uint8 (h, w, 3) -> (target_height, target_width, 3): scaled to cover the target (bicubic, antialiased when
    shrinking), then the centre kept."""
    height, width = image.shape[:2]
    scaled_width, scaled_height = cover_size(width, height, target_width, target_height)
    left, top = (scaled_width - target_width) // 2, (scaled_height - target_height) // 2
    scaled = Image.fromarray(image).resize((scaled_width, scaled_height), Image.Resampling.BICUBIC)
    return np.asarray(scaled.crop((left, top, left + target_width, top + target_height)))


def crop_note(path: str, width: int, height: int, target_width: int, target_height: int) -> Optional[str]:
    """The one line announcing a crop, or None when scaling alone reaches the target size."""
    scaled_width, scaled_height = cover_size(width, height, target_width, target_height)
    if (scaled_width, scaled_height) == (target_width, target_height):
        return None
    cut = (f"{scaled_width - target_width} px of its width" if scaled_width > target_width
           else f"{scaled_height - target_height} px of its height")
    return (f"note: {path} is {width}x{height}; scaled to {scaled_width}x{scaled_height} and centre-cropped to "
            f"{target_width}x{target_height} (cuts {cut})")


def nearest_in_time(frames: Iterable[TimedFrame], fps: float, count: int) -> Iterator[tuple[int, TimedFrame]]:
    """(source index, frame) for the times 0, 1/fps, 2/fps, ...: the frame whose start time is nearest (ties to
    the earlier), while the video lasts, at most `count`. Reads only as far as the last time needs."""
    wanted, previous, previous_index = 0, None, -1
    for index, frame in enumerate(frames):
        while previous is not None and wanted < count and \
                wanted / fps - previous.time <= frame.time - wanted / fps + TIME_TOLERANCE:
            yield previous_index, previous
            wanted += 1
        if wanted == count:
            return
        previous, previous_index = frame, index
    while previous is not None and wanted < count and wanted / fps < previous.time + previous.duration:
        yield previous_index, previous
        wanted += 1


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


@contextlib.contextmanager
def open_frame_folder(folder: str, fps: float):
    """A folder of image files as a `VideoStream` at `fps`: every file the same size (checked from the headers
    before any frame is decoded), in natural order of their names."""
    names = sorted((name for name in os.listdir(folder)
                    if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")), key=_natural_key)
    if not names:
        raise ValueError(f"{folder} holds no frames (image files: {', '.join(IMAGE_EXTENSIONS)})")
    paths = [os.path.join(folder, name) for name in names]
    sizes = {}
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes[path] = image.size
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read {path} as an image ({first_line(error)})") from None
    first = sizes[paths[0]]
    for path in paths:
        if sizes[path] != first:
            raise ValueError(f"the frames in {folder} differ in size: {names[0]} is {first[0]}x{first[1]}, "
                             f"{os.path.basename(path)} is {sizes[path][0]}x{sizes[path][1]}")

    def frames():
        for index, path in enumerate(paths):
            with Image.open(path) as image:
                yield TimedFrame(index / fps, 1 / fps, np.asarray(image.convert("RGB")))

    yield VideoStream(*first, fps, frames())


def _open(path: str, folder_fps: float):
    if os.path.isdir(path):
        return open_frame_folder(path, folder_fps)
    return open_video(path)


def load_source_video(path: str, height: int, width: int, max_frames: int = 49, fps: float = MODEL_FPS,
                      folder_fps: Optional[float] = None) -> torch.Tensor:
    """uint8 (F, height, width, 3): the video at `fps` (nearest frame in time), scaled and centre-cropped, cut to
    `usable_frame_count` frames (at most `max_frames`). A folder's frames are taken `folder_fps` apart (default
    `fps`). Prints one line when the crop cuts and when the video is shorter than `max_frames`."""
    if usable_frame_count(max_frames, max_frames) != max_frames:
        raise ValueError(f"max_frames must be 8m+1 (9, 17, ..., 49), got {max_frames}")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video not found: {path}")
    with _open(path, folder_fps or fps) as stream:
        if stream.width * stream.height > MAX_FRAME_PIXELS:
            raise ValueError(f"{path} has {stream.width}x{stream.height} frames, more than the "
                             f"{MAX_FRAME_PIXELS / 1e6:.0f} megapixels read here; scale it down first "
                             f"(ffmpeg -i IN -vf scale={width * 4}:-2 OUT)")
        note = crop_note(path, stream.width, stream.height, width, height)
        if note:
            print(note)
        kept, last_index, last_fitted = [], None, None
        for index, frame in nearest_in_time(stream.frames, fps, max_frames):
            if index != last_index:  # a frame shown at several target times is fitted once
                last_index, last_fitted = index, fit_frame(frame.image, width, height)
            kept.append(last_fitted)
    if not kept:
        raise ValueError(f"{path} holds no frames")
    count = usable_frame_count(len(kept), max_frames)
    if count == 0:
        raise ValueError(f"{path} gives {len(kept)} frames at {fps:g} fps ({len(kept) / fps:.2f} s); editing needs "
                         f"at least {MIN_FRAMES} ({MIN_FRAMES / fps:.2f} s)")
    if count < max_frames:
        print(f"note: {path} gives {len(kept)} frames at {fps:g} fps; using the first {count} (8m+1 frames: an odd "
              f"number of latent frames), not {max_frames}")
    return torch.from_numpy(np.stack(kept[:count]))
