"""Writing sampled frames as mp4 files, named like the original's outputs."""
import os

import imageio
import numpy as np
import torch


def write_mp4(path: str, frames: torch.Tensor, fps: int) -> str:
    """Write (F, H, W, 3) uint8 frames with libx264 (imageio-ffmpeg, quality 8 like the original)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with imageio.get_writer(path, fps=fps, quality=8, macro_block_size=1) as writer:
        for frame in frames.numpy():
            writer.append_data(np.ascontiguousarray(frame))
    return path


def side_by_side(videos: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W, 3) -> (F, H, B·W, 3): the batch's videos next to each other, row 0 on the left."""
    return torch.cat(list(videos), dim=2)
