"""Fusing the window x0 predictions of one denoising step into the long latent (docs/method.md, "Latent blending")."""
import torch


def blend_weights(tile: int) -> torch.Tensor:
    """(tile,) fp32 triangle peaking at the centre: w_j = min((2j+1)/tile, 2 - (2j+1)/tile)."""
    ramp = (2 * torch.arange(tile, dtype=torch.float32) + 1) / tile
    return torch.minimum(ramp, 2 - ramp)


class LatentBlender:
    """Weighted sum of window predictions over the long latent, normalised frame by frame."""

    def __init__(self, like: torch.Tensor, tile: int):
        """`like`: the long latent (B, L, C, H, W); predictions accumulate in fp32 on its device."""
        self.sum = torch.zeros_like(like, dtype=torch.float32)
        self.weight = torch.zeros(like.shape[1], dtype=torch.float32, device=like.device)
        self.frame_weights = blend_weights(tile).to(like.device)

    def add(self, window: slice, prediction: torch.Tensor) -> None:
        """Accumulate one window's (B, tile, C, H, W) prediction."""
        self.sum[:, window] += prediction * self.frame_weights.view(1, -1, 1, 1, 1)
        self.weight[window] += self.frame_weights

    def result(self) -> torch.Tensor:
        if not bool((self.weight > 0).all()):
            raise ValueError("some latent frames are covered by no window")
        return self.sum / self.weight.view(1, -1, 1, 1, 1)
