"""Min-max normalisation of attention maps, as the original normalises masks and figures."""
import torch

NORMALISE_EPS = 1e-6


def min_max(x: torch.Tensor, dims=None) -> torch.Tensor:
    """(x − min) / (max − min + 1e-6) over `dims` (all of x when None)."""
    dims = tuple(range(x.dim())) if dims is None else dims
    low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    return (x - low) / (high - low + NORMALISE_EPS)


def normalise_per_frame(maps: torch.Tensor) -> torch.Tensor:
    """(frames, rows, cols) maps, each frame min-max normalised on its own."""
    return min_max(maps, dims=(1, 2))
