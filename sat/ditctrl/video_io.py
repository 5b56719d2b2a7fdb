"""Writing sampled frames as mp4 files, named like the original's outputs; reading videos back (mp4 and anything
else ffmpeg decodes, GIF through Pillow), one frame at a time."""
import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import imageio
import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image, ImageSequence

from .output_files import OutputCheckError, first_line, write_file

GIF_SIGNATURE = b"GIF8"
GIF_DEFAULT_DURATION_MS = 100  # what browsers show a GIF frame of 0-10 ms for


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


class VideoClip(NamedTuple):
    frames: torch.Tensor  # uint8 (F, H, W, 3) RGB
    fps: float


class TimedFrame(NamedTuple):
    time: float         # seconds from the start of the video
    duration: float     # seconds it is shown
    image: np.ndarray   # uint8 (H, W, 3) RGB


@dataclass
class VideoStream:
    """A video being decoded: its frame size (known before any frame is decoded) and its frames, one at a time."""
    width: int
    height: int
    fps: Optional[float]  # None for a GIF: each frame has its own duration
    frames: Iterator[TimedFrame]


def _ffmpeg_refusal(path: str, error: Exception) -> ValueError:
    """One line for a file ffmpeg does not open: no video stream in it, or not a video it can read."""
    log = str(error).split("=== stderr ===")[-1]
    if "Stream #" in log and "Video:" not in log:
        return ValueError(f"{path} holds no video stream")
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return ValueError(f"cannot read {path} as a video (ffmpeg: {lines[-1] if lines else first_line(error)})")


def _ffmpeg_stream(path: str, stack: contextlib.ExitStack) -> VideoStream:
    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    stack.callback(reader.close)  # stops ffmpeg when the caller has the frames it needs
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as error:
        raise _ffmpeg_refusal(path, error) from None
    (width, height), fps = meta["size"], meta.get("fps") or 0
    if not fps > 0:
        raise ValueError(f"cannot read {path} as a video: it gives no frame rate")

    def frames():
        try:
            for index, data in enumerate(reader):
                image = np.frombuffer(data, np.uint8).reshape(height, width, 3)
                yield TimedFrame(index / fps, 1 / fps, image)
        except (OSError, RuntimeError) as error:
            raise ValueError(f"cannot read {path} as a video (ffmpeg: {first_line(error)})") from None

    return VideoStream(width, height, float(fps), frames())


def _gif_stream(path: str, stack: contextlib.ExitStack) -> VideoStream:
    """A GIF through Pillow: palette frames are converted to RGB, each frame keeps its own duration."""
    try:
        gif = stack.enter_context(Image.open(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as a GIF ({first_line(error)})") from None

    def frames():
        time = 0.0
        try:
            for frame in ImageSequence.Iterator(gif):
                milliseconds = frame.info.get("duration") or 0
                duration = (milliseconds if milliseconds > 10 else GIF_DEFAULT_DURATION_MS) / 1000
                yield TimedFrame(time, duration, np.asarray(frame.convert("RGB")))
                time += duration
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"cannot read {path} as a GIF ({first_line(error)})") from None

    return VideoStream(*gif.size, None, frames())


@contextlib.contextmanager
def open_video(path: str):
    """The `VideoStream` of a video file; FileNotFoundError or one-line ValueErrors for what cannot be read."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes)")
    with open(path, "rb") as file:
        is_gif = file.read(len(GIF_SIGNATURE)) == GIF_SIGNATURE
    with contextlib.ExitStack() as stack:
        yield (_gif_stream if is_gif else _ffmpeg_stream)(path, stack)


def read_video(path: str) -> VideoClip:
    """All frames of a video file (mp4, GIF, anything ffmpeg decodes) and its frame rate."""
    with open_video(path) as stream:
        frames = list(stream.frames)
    if not frames:
        raise ValueError(f"{path} holds no frames")
    end = frames[-1].time + frames[-1].duration
    return VideoClip(torch.from_numpy(np.stack([frame.image for frame in frames])), stream.fps or len(frames) / end)
