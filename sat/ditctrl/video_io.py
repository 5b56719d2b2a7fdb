"""Writing sampled frames as mp4 files, named like the original's outputs."""
import imageio
import imageio_ffmpeg
import numpy as np
import torch

from .output_files import OutputCheckError, first_line, write_file


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
