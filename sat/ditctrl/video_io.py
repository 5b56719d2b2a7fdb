"""Writing sampled frames as mp4 files, named like the original's outputs; reading videos back (mp4 and anything
else ffmpeg decodes, GIF through Pillow), one frame at a time."""
import contextlib
import errno
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import imageio
import imageio_ffmpeg
import numpy as np
import torch
from PIL import Image, ImageSequence

from .output_files import OutputCheckError, first_line, write_file

# Causes worth naming that ffmpeg prints in its own words (the OS's message) when it cannot write a file.
OS_CAUSES = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                                                 errno.EIO))
_LOG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")  # "[out#0/mp4 @ 0x55…] " before ffmpeg's messages
GIF_SIGNATURE = b"GIF8"
GIF_DEFAULT_DURATION_MS = 100  # what browsers show a GIF frame of 0-10 ms for


def ffmpeg_cause(text: str) -> str | None:
    """The cause in what ffmpeg printed: an OS error it names (e.g. "No space left on device"), else its last line
    (without the "[muxer @ 0x…]" tags); None when it printed nothing."""
    for cause in OS_CAUSES:
        if cause.lower() in text.lower():
            return cause
    lines = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else None


@contextlib.contextmanager
def _stderr_of_started_processes(into: list):
    """Point file descriptor 2 at a temporary file in the block, so that ffmpeg (which imageio's writer starts with
    our stderr) prints into it instead of on the terminal; the text is appended to `into` when the block ends."""
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            into.append(log.read().decode(errors="replace"))


def _os_cause_error(writer_messages: str) -> OutputCheckError | None:
    """The error to report when the writing ffmpeg printed an OS error (a full disk), else None."""
    cause = ffmpeg_cause(writer_messages)
    return OutputCheckError(f"{cause} (ffmpeg could not finish the video)") if cause in OS_CAUSES else None


def _check_frame_count(path: str, expected: int, writer_messages: str = "") -> None:
    """Decode the whole file again with ffmpeg; it must hold `expected` frames. A file that does not read back is
    reported with the cause the writing ffmpeg printed (`writer_messages`), else the reading one's."""
    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    except (RuntimeError, OSError) as error:
        cause = ffmpeg_cause(str(error)) or first_line(error)
        raise _os_cause_error(writer_messages) or OutputCheckError(f"the video does not read back ({cause})") from error
    if frames != expected:
        raise OutputCheckError(f"the video reads back with {frames} frames instead of {expected}")


def write_mp4(path: str, frames: torch.Tensor, fps: int) -> str:
    """Write (F, H, W, 3) uint8 frames with libx264 (imageio-ffmpeg, quality 8 like the original).

    Safely (`output_files.write_file`): the file is reopened and its frame count compared before it
    takes its final name. What ffmpeg prints while writing is kept off the terminal and read for the cause when the
    video does not read back (a full disk: "No space left on device").
    """
    messages = []

    def write(temporary):
        try:
            with _stderr_of_started_processes(messages):
                writer = imageio.get_writer(temporary, fps=fps, quality=8, macro_block_size=1)
                try:
                    for frame in frames.numpy():
                        writer.append_data(np.ascontiguousarray(frame))
                finally:  # also on errors, which imageio's own __exit__ leaves to the garbage collector: ffmpeg is
                    writer.close()  # done before the temporary file is removed
        except OSError as error:  # ffmpeg ended while frames were still coming (a broken pipe): say why it ended
            raise _os_cause_error("".join(messages)) or error

    return write_file(path, write, verify=lambda temporary: _check_frame_count(temporary, len(frames), "".join(messages)))


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
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read {path} as a GIF ({first_line(error)})") from None

    def frames():
        time = 0.0
        try:
            for frame in ImageSequence.Iterator(gif):
                milliseconds = frame.info.get("duration") or 0
                duration = (milliseconds if milliseconds > 10 else GIF_DEFAULT_DURATION_MS) / 1000
                yield TimedFrame(time, duration, np.asarray(frame.convert("RGB")))
                time += duration
        except (OSError, ValueError, EOFError, Image.DecompressionBombError) as error:
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
