"""How well a reconstruction holds: peak signal-to-noise ratio of uint8 frames."""
import math

import torch


def psnr(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """10·log10(255² / MSE) in dB of uint8 `frames` against `reference` of the same shape, the mean squared error
    taken over every value in float64; inf when they are equal."""
    if frames.shape != reference.shape or frames.dtype != torch.uint8 or reference.dtype != torch.uint8:
        raise ValueError(f"psnr compares uint8 frames of one shape, got {frames.dtype} {tuple(frames.shape)} and "
                         f"{reference.dtype} {tuple(reference.shape)}")
    mse = (frames.double() - reference.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
