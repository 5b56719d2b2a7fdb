"""Deterministic DDIM on the sampler's schedule: sampling, inversion of a clean latent, and the replay that edits it.

Levels are a = sqrt(alpha_bar) (the schedule's alphas) and s = sqrt(1 - a^2); a latent at level a is
x = a·x0 + s·eps. A DDIM step from level a to level a' keeps the model's prediction of x0 and the noise it
implies, eps = (x - a·x0) / s, and puts them together at the other level:

    step:     x' = a'·x0 + s'·(x - a·x0) / s
    inverse:  x  = a·x0 + s·(x' - a'·x0) / s'      (the exact inverse for the same x0)

Sampling step i goes from alphas[i] to alphas[i+1] with the model asked at (step i, alphas[i], timesteps[i]).
Inversion visits the steps backwards: step i takes the latent from alphas[i+1] back to alphas[i] with the model's
x0 of the latent it has, asked at step i's timestep and level (the standard DDIM-inversion approximation
x0(x_{i+1}) ≈ x0(x_i)). Its first step starts from the clean latent (a' = 1), which holds no noise to keep: there
the latent is its own x0 and the noise is the model's, its v = (a·x - x0) / s (at the clean level v is the noise).
Inversion keeps every latent: trajectory[i] is the latent at sampling step i (trajectory[0] at alpha 0,
trajectory[n] the input), so the replay reads it by step index.

The loops take the model as `denoise(x, step_index, alpha, timestep) -> x0` (sampler.py), guided by the caller
(`GuidedDenoiser` with `dynamic_cfg=False` for the constant guidance of inversion). Their state is float32.
"""
from typing import Optional

import torch

from .sampler import Denoise, Progress, run_sampler
from .schedule import SamplingSchedule


def ddim_step(x: torch.Tensor, x0: torch.Tensor, alpha: float, alpha_next: float) -> torch.Tensor:
    """x at level `alpha` < 1 with the model's x0 -> x at level `alpha_next`."""
    s, s_next = (1 - alpha**2) ** 0.5, (1 - alpha_next**2) ** 0.5
    return alpha_next * x0 + s_next * (x - alpha * x0) / s


def ddim_inverse_step(x_next: torch.Tensor, x0: torch.Tensor, alpha: float, alpha_next: float) -> torch.Tensor:
    """x at level `alpha_next` with the model's x0 -> x at level `alpha` < `alpha_next`: the exact inverse of
    `ddim_step` for the same x0. From the clean level (`alpha_next` = 1) the noise is the model's v of x_next."""
    s = (1 - alpha**2) ** 0.5
    if alpha_next >= 1:
        return alpha * x_next + (alpha * x_next - x0)  # a·x_next + s·v, v = (a·x_next - x0) / s
    return alpha * x0 + s * (x_next - alpha_next * x0) / (1 - alpha_next**2) ** 0.5


def _check_float32(x: torch.Tensor, what: str) -> None:
    if x.dtype != torch.float32:
        raise ValueError(f"the {what} must be float32, got {x.dtype}")


def sample_ddim(denoise: Denoise, x: torch.Tensor, schedule: SamplingSchedule,
                progress: Optional[Progress] = None) -> torch.Tensor:
    """DDIM from the noise x at alphas[0]; returns the last step's x0 prediction."""
    alphas = schedule.alphas

    def update(i, x, x0, x0_prev):
        return ddim_step(x, x0, alphas[i], alphas[i + 1])

    return run_sampler(denoise, x, schedule, update, progress)


def invert_ddim(denoise: Denoise, latent: torch.Tensor, schedule: SamplingSchedule,
                progress: Optional[Progress] = None) -> torch.Tensor:
    """The trajectory (n+1, *latent.shape) float32 of the clean `latent` inverted through the n steps of
    `schedule`: trajectory[i] is at level alphas[i], trajectory[n] is `latent`."""
    _check_float32(latent, "latent to invert")
    alphas, x = schedule.alphas, latent
    steps = range(schedule.num_steps - 1, -1, -1)
    trajectory = [x]
    for i in progress(steps) if progress else steps:
        x0 = denoise(x, i, alphas[i], schedule.timesteps[i]).float()
        x = ddim_inverse_step(x, x0, alphas[i], alphas[i + 1])
        trajectory.append(x)
    return torch.stack(trajectory[::-1])


def replay_ddim(denoise: Denoise, trajectory: torch.Tensor, schedule: SamplingSchedule,
                progress: Optional[Progress] = None) -> torch.Tensor:
    """Edit an inverted latent: the final (B, ...) latents of B targets sampled with DDIM from the inverted noise
    trajectory[0], next to their sources, which replay the trajectory (n+1, B, ...).

    `denoise` sees the batch [sources; targets] (2B rows; with `GuidedDenoiser` and per-row conditions
    [source; target] its DiT batch is the `PairBatch` (u_source, u_target, c_source, c_target) the attention
    controllers take). At step i the sources are trajectory[i], whatever the model predicted for them.
    """
    _check_float32(trajectory, "trajectory")
    if trajectory.shape[0] != schedule.num_steps + 1:
        raise ValueError(f"the trajectory holds {trajectory.shape[0]} latents; a {schedule.num_steps}-step "
                         f"schedule replays {schedule.num_steps + 1}")
    alphas, sources = schedule.alphas, trajectory.shape[1]

    def update(i, x, x0, x0_prev):
        targets = x[sources:]
        targets = ddim_step(targets, x0[sources:], alphas[i], alphas[i + 1])
        return torch.cat([trajectory[i + 1].to(x.device), targets])

    x = torch.cat([trajectory[0], trajectory[0]])
    return run_sampler(denoise, x, schedule, update, progress)[sources:]
