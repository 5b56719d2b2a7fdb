"""CogVideoX-2B denoiser maths: alpha quantisation, v-prediction to x0, and dynamic classifier-free guidance.

Mirrors SAT's `DiscreteDenoiser` + `VideoScaling` (c_skip = a*, c_out = -sqrt(1 - a*^2), c_in = 1) and
`DynamicCFG`. The model itself (and c_noise = t, the DDPM timestep) is the caller's business.
"""

import math

import torch


def table_index(alpha, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest table entry for each alpha (first index on ties); same shape as `alpha`, int64."""
    alpha = torch.as_tensor(alpha, dtype=table.dtype, device=table.device)
    return (alpha.unsqueeze(-1) - table).abs().argmin(dim=-1)


def quantize_alpha(alpha, table: torch.Tensor) -> torch.Tensor:
    """Snap sampler alphas to the denoiser table, as SAT does before computing c_skip and c_out."""
    return table[table_index(alpha, table)]


def v_to_x0(x: torch.Tensor, v: torch.Tensor, alpha) -> torch.Tensor:
    """x0 = a*x - sqrt(1 - a^2)*v in float32; `alpha` is a scalar or one value per batch row (B,)."""
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=x.device)
    alpha = alpha.reshape(alpha.shape + (1,) * (x.ndim - alpha.ndim))  # (B,) -> (B, 1, ..., 1)
    c_out = -((1 - alpha**2) ** 0.5)
    return v.float() * c_out + x.float() * alpha


def dynamic_cfg_scale(t: float, *, scale: float, exp: float, sampler_steps: int, cfg_steps: int) -> float:
    """SAT's `DynamicCFG` scale `1 + scale*(1 - cos(pi*((sampler_steps - t)/cfg_steps)^exp))/2`, as the original.

    Two step counts: the original's sampler hands the guider `step_index = sampler_steps - t`, with `t` the DDPM
    timestep value (999, 979, ...), not the step index; the guider divides by its own count `cfg_steps` (50 in
    the original's config, whatever the sampler's count). The base is then mostly large and negative, so the
    scale jumps pseudo-randomly between 1 and 1 + scale. diffusers' `use_dynamic_cfg` uses one count for both
    (`cfg_steps = sampler_steps`).
    """
    base = (sampler_steps - t) / cfg_steps
    if base < 0 and not float(exp).is_integer():
        raise ValueError(f"exp must be an integer for timestep t={t} > sampler_steps={sampler_steps}, got exp={exp!r}")
    return 1 + scale * (1 - math.cos(math.pi * base**exp)) / 2


def guide(x0_uncond: torch.Tensor, x0_cond: torch.Tensor, g: float) -> torch.Tensor:
    """Classifier-free guidance on x0: x0_u + g*(x0_c - x0_u)."""
    return x0_uncond + g * (x0_cond - x0_uncond)
