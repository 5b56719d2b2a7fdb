"""Fixed 3-D sin-cos position table of CogVideoX-2B (docs/model.md, "Position embedding: 3-D sin-cos table (2B)")."""
import numpy as np
import torch


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(len(positions), dim) table: sin half first, then cos, frequencies 1/10000^(k/(dim/2)) in float64."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(hidden_size: int, frames: int, height: int, width: int,
              spatial_interpolation: float, temporal_interpolation: float = 1.0) -> torch.Tensor:
    """(frames*height*width, hidden_size) float32 table, rows ordered (frame, row, column).

    A quarter of the channels encode time; the rest split evenly between the column coordinate
    (first) and the row coordinate (second), exactly as the original.
    """
    time_dim, space_dim = hidden_size // 4, hidden_size * 3 // 4
    cols = np.arange(width, dtype=np.float32) / np.float32(spatial_interpolation)
    rows = np.arange(height, dtype=np.float32) / np.float32(spatial_interpolation)
    times = np.arange(frames, dtype=np.float32) / np.float32(temporal_interpolation)

    grid_cols, grid_rows = np.meshgrid(cols, rows)  # each (height, width)
    spatial = np.concatenate([sincos_1d(space_dim // 2, grid_cols), sincos_1d(space_dim // 2, grid_rows)], axis=1)
    temporal = sincos_1d(time_dim, times)  # (frames, time_dim)

    table = np.concatenate([
        np.repeat(temporal[:, None, :], height * width, axis=1),
        np.repeat(spatial[None, :, :], frames, axis=0),
    ], axis=-1)  # (frames, height*width, hidden_size)
    return torch.from_numpy(table.reshape(-1, hidden_size)).float()


def rotary_3d(head_dim: int, frames: int, height: int, width: int, theta: float = 10000.0):
    """cos, sin (frames*height*width, head_dim) float32 of CogVideoX-5B's 3-D rotary embedding.

    The head dim splits into time (head_dim // 4) and rows and columns (head_dim // 8 * 3 each). Per axis
    the frequencies 1/theta^(2k/dim) multiply the integer position and are repeated for interleaved
    pairs; rows are ordered (frame, row, column) like the video tokens.
    """
    def axis(dim: int, length: int) -> torch.Tensor:
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
        return torch.outer(torch.arange(length, dtype=torch.float32), freqs).repeat_interleave(2, dim=1)

    space_dim = head_dim // 8 * 3
    t, h, w = axis(head_dim // 4, frames), axis(space_dim, height), axis(space_dim, width)
    angles = torch.cat([
        t[:, None, None].expand(-1, height, width, -1),
        h[None, :, None].expand(frames, -1, width, -1),
        w[None, None].expand(frames, height, -1, -1),
    ], dim=-1).reshape(frames * height * width, -1)
    return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, rotate_half acting on interleaved pairs: (x0, x1) -> (-x1, x0)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + rotated * sin
