"""PNG files of the mask-guided controller's continuous masks (docs/method.md, "Mask-guided KV-sharing")."""
import imageio.v3 as iio
import torch

from ..output_files import write_file


def frames_side_by_side(maps: torch.Tensor) -> torch.Tensor:
    """(frames, rows, cols) -> (rows, frames·cols): frame f fills columns [f·cols, (f+1)·cols)."""
    return maps.permute(1, 0, 2).flatten(1)


def save_mask_frames(maps: torch.Tensor, path: str) -> None:
    """Write (frames, rows, cols) values in [0, 1] as a rows × frames·cols 3-channel uint8 PNG, round(255·v)."""
    gray = torch.round(255 * frames_side_by_side(maps.float())).to(torch.uint8).cpu()
    write_file(path, lambda temporary: iio.imwrite(temporary, gray[..., None].expand(-1, -1, 3).numpy()))
