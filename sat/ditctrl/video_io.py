"""Reading videos (mp4, webm, GIF, ...) as frames, and writing sampled frames as mp4 files."""
import os
from typing import NamedTuple

import imageio
import imageio_ffmpeg
import numpy as np
import torch

from .output_files import OutputCheckError, first_line, write_file

GIF_DEFAULT_FPS = 10.0  # a GIF without frame durations plays at about this rate in browsers


class VideoClip(NamedTuple):
    frames: torch.Tensor  # (F, H, W, 3) uint8, RGB
    fps: float


def _ffmpeg_failure(path: str, error: BaseException) -> ValueError:
    """One line for a file ffmpeg cannot decode: no video stream in it, or not a readable video at all."""
    text = str(error)
    if "Input #0" in text and ("does not contain any stream" in text or "matches no streams" in text):
        return ValueError(f"{path} holds no video stream")
    return ValueError(f"cannot read the video {path} ({first_line(error)})")


def _read_with_ffmpeg(path: str) -> VideoClip:
    try:
        reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]
    except (OSError, RuntimeError, StopIteration) as error:
        raise _ffmpeg_failure(path, error) from None
    return VideoClip(torch.from_numpy(np.stack(frames)) if frames else torch.empty(0, 0, 0, 3, dtype=torch.uint8),
                     float(meta.get("fps") or 0.0))


def _read_gif(path: str) -> VideoClip:
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            frames, durations = [], []
            for frame in ImageSequence.Iterator(image):
                frames.append(np.asarray(frame.convert("RGB")))
                durations.append(frame.info.get("duration") or 0)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot read the GIF {path} ({first_line(error)})") from None
    fps = 1000.0 * len(durations) / sum(durations) if sum(durations) else GIF_DEFAULT_FPS
    return VideoClip(torch.from_numpy(np.stack(frames)), fps)


def read_video(path: str) -> VideoClip:
    """Every frame of a video file as it is stored (no resizing, no cropping) and its frame rate.

    mp4, webm and the other formats ffmpeg reads go through imageio-ffmpeg, GIFs through Pillow. A missing
    file is a FileNotFoundError; a file that is not a readable video, one without a video stream and one
    without frames are a ValueError (each one line naming the file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    clip = _read_gif(path) if path.lower().endswith(".gif") else _read_with_ffmpeg(path)
    if len(clip.frames) == 0:
        raise ValueError(f"{path} holds no frames")
    return clip


def _check_frame_count(path: str, expected: int) -> None:
    """Decode the whole file again with ffmpeg; it must hold `expected` frames."""
    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    except (RuntimeError, OSError) as error:
        raise OutputCheckError(f"the video does not read back ({first_line(error)})") from error
    if frames != expected:
        raise OutputCheckError(f"the video reads back with {frames} frames instead of {expected}")


def write_mp4(path: str, frames: torch.Tensor, fps: int) -> str:
    """Write (F, H, W, 3) uint8 frames with libx264 (imageio-ffmpeg, quality 8 like the original).

    Safely (`output_files.write_file`): the file is reopened and its frame count compared before it
    takes its final name.
    """
    def write(temporary):
        writer = imageio.get_writer(temporary, fps=fps, quality=8, macro_block_size=1)
        try:
            for frame in frames.numpy():
                writer.append_data(np.ascontiguousarray(frame))
        finally:  # also on errors, which imageio's own __exit__ leaves to the garbage collector: ffmpeg is done
            writer.close()  # before the temporary file is removed

    return write_file(path, write, verify=lambda temporary: _check_frame_count(temporary, len(frames)))


def side_by_side(videos: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) -> (F, H, B·W, 3): the batch's videos next to each other, row 0 on the left."""
    return torch.cat(list(videos), dim=2)
