"""CogVideoX-2B noise schedule: SAT's `ZeroSNRDDPMDiscretization` (scaled-linear DDPM, SNR shift, zero terminal SNR).

Precisions follow SAT: betas and their cumulative product in float64, the square root and the zero-SNR rescale in
float32. All alphas here are sqrt(alpha_bar), the quantity SAT calls `alpha_cumprod_sqrt`.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .config import NUM_TRAIN_TIMESTEPS

LINEAR_START = 0.00085
LINEAR_END = 0.012
SHIFT_SCALE = 3.0


def shifted_alphas_cumprod(shift_scale: float = SHIFT_SCALE) -> torch.Tensor:
    """alpha_bar'_t for t = 0..999, float64 (1000,): scaled-linear betas, cumulative product, SNR / shift_scale."""
    if not shift_scale > 0:
        raise ValueError(f"shift_scale must be positive, got {shift_scale!r}")
    betas = torch.linspace(LINEAR_START**0.5, LINEAR_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return alphas_cumprod / (shift_scale + (1 - shift_scale) * alphas_cumprod)


def zero_terminal_snr_sqrt(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sqrt(alpha_bar) over ascending timesteps, rescaled in float32 so the last is 0 and the first is unchanged."""
    s = alphas_cumprod.to(torch.float32).sqrt()
    first, last = s[0].clone(), s[-1].clone()
    return (s - last) * (first / (first - last))


def denoiser_table(shift_scale: float = SHIFT_SCALE) -> torch.Tensor:
    """q[t], float32 (1000,): the denoiser's sqrt(alpha_bar) table, zero-SNR rescaled over all 1000 timesteps."""
    return zero_terminal_snr_sqrt(shifted_alphas_cumprod(shift_scale))


@dataclass(frozen=True)
class SamplingSchedule:
    """What the sampler visits: step i denoises at DDPM timestep `timesteps[i]` and level `alphas[i]`.

    timesteps: (n,) descending, e.g. 999.0, 979.0, ..., 19.0.
    alphas: (n + 1,) sqrt(alpha_bar) per step (alphas[0] = 0 at t = 999), plus alphas[n] = 1 (clean data).
    """

    timesteps: tuple[float, ...]
    alphas: tuple[float, ...]

    def __post_init__(self):
        if len(self.alphas) != len(self.timesteps) + 1:
            raise ValueError(
                f"alphas needs one entry more than timesteps, got {len(self.alphas)} alphas "
                f"for {len(self.timesteps)} timesteps"
            )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def sampling_schedule(num_steps: int = 50, shift_scale: float = SHIFT_SCALE) -> SamplingSchedule:
    """SAT's sampling discretisation: `floor(linspace(999, 0, n, endpoint=False))`, zero-SNR rescaled over
    these n timesteps only (so alphas differ slightly from `denoiser_table()` at the same t), then alpha = 1."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 2 <= num_steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"num_steps must be an integer in 2..{NUM_TRAIN_TIMESTEPS}, got {num_steps!r}")
    ascending = np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, num_steps, endpoint=False).astype(np.int64)[::-1]
    ascending_alphas = zero_terminal_snr_sqrt(shifted_alphas_cumprod(shift_scale)[torch.from_numpy(ascending.copy())])
    return SamplingSchedule(
        timesteps=tuple(float(t) for t in ascending[::-1]),
        alphas=tuple(ascending_alphas.flip(0).tolist()) + (1.0,),
    )
