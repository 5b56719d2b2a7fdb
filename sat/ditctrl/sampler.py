"""The sampler in VP form over sqrt(alpha_bar): SDE-DPM-Solver++(2M) (SAT's `VPSDEDPMPP2MSampler`).

The steps are pure functions; the loops take the model as `denoise(x, step_index, alpha, timestep) -> x0`
(already guided and blended by the caller) and the RNG policy as `draw_noise(x, first_step) -> noise like x`.
The state stays float32. Multipliers are computed in float32 from the schedule's alphas, as SAT does.
"""

from typing import Callable, Iterable, NamedTuple, Optional

import torch

from .schedule import SamplingSchedule

Denoise = Callable[[torch.Tensor, int, float, float], torch.Tensor]
DrawNoise = Callable[[torch.Tensor, bool], torch.Tensor]
Progress = Callable[[range], Iterable[int]]


class DPMMultipliers(NamedTuple):
    """Coefficients of x_next = m1*x - m2*D + sigma*noise, with D = m3*x0 - m4*x0_prev (x0 on the first step)."""

    h: torch.Tensor
    r: Optional[torch.Tensor]
    m1: torch.Tensor
    m2: torch.Tensor
    m3: Optional[torch.Tensor]
    m4: Optional[torch.Tensor]
    sigma: torch.Tensor


def half_log_snr(alpha: torch.Tensor) -> torch.Tensor:
    """lambda(a) = ln(a / sqrt(1 - a^2)); -inf at a = 0."""
    alpha_bar = alpha**2
    return ((alpha_bar / (1 - alpha_bar)) ** 0.5).log()


def dpmpp_2m_sde_multipliers(a_prev, a, a_next, dtype=torch.float32, device=None) -> DPMMultipliers:
    """Multipliers for the step from level a to a_next; a_prev None means no history (r, m3, m4 are None).

    a = 0 (first step) gives h = inf, m1 = 0; a_prev = 0 (second step) gives r = inf, m3 = 1, m4 = 0.
    """
    a, a_next = (torch.as_tensor(value, dtype=dtype, device=device) for value in (a, a_next))
    h = half_log_snr(a_next) - half_log_snr(a)
    m1 = ((1 - a_next**2) / (1 - a**2)) ** 0.5 * (-h).exp()
    m2 = (-2 * h).expm1() * a_next
    sigma = (1 - a_next**2) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
    if a_prev is None:
        return DPMMultipliers(h, None, m1, m2, None, None, sigma)
    r = (half_log_snr(a) - half_log_snr(torch.as_tensor(a_prev, dtype=dtype, device=device))) / h
    return DPMMultipliers(h, r, m1, m2, 1 + 1 / (2 * r), 1 / (2 * r), sigma)


def dpmpp_2m_sde_step(x, x0, x0_prev, a_prev, a, a_next, noise) -> torch.Tensor:
    """One SDE-DPM-Solver++(2M) update of x at level a to level a_next.

    x0_prev None (first step): first order, a_prev unused. Otherwise second order with D = m3*x0 - m4*x0_prev.
    """
    if x0_prev is not None and a_prev is None:
        raise ValueError("a_prev is required when x0_prev is given (second-order step)")
    m = dpmpp_2m_sde_multipliers(None if x0_prev is None else a_prev, a, a_next, device=x.device)
    d = x0 if x0_prev is None else m.m3 * x0 - m.m4 * x0_prev
    return m.m1 * x - m.m2 * d + m.sigma * noise


def full_noise_discarding_first(x: torch.Tensor, first_step: bool) -> torch.Tensor:
    """RNG use of SAT's and DiTCtrl's multi-prompt samplers: one randn_like(x) on the first step; two on every
    later step, of which the first (the discarded first-order candidate's noise) is thrown away."""
    if not first_step:
        torch.randn_like(x)
    return torch.randn_like(x)


def shared_row_noise(x: torch.Tensor, first_step: bool) -> torch.Tensor:
    """RNG use of DiTCtrl's `VPSDEDPMPP2MSampler_Single`: one draw shaped like x[0] per step, shared by all rows."""
    return torch.randn_like(x[0]).expand_as(x)


def run_sampler(denoise: Denoise, x: torch.Tensor, schedule: SamplingSchedule, update, progress) -> torch.Tensor:
    """Denoise at every step and apply `update(i, x, x0, x0_prev)` on all but the last, which returns its x0."""
    if x.dtype != torch.float32:
        raise ValueError(f"the sampler state must be float32, got x.dtype={x.dtype}")
    last = schedule.num_steps - 1
    steps = range(schedule.num_steps)
    x0_prev = None
    for i in progress(steps) if progress else steps:
        x0 = denoise(x, i, schedule.alphas[i], schedule.timesteps[i]).float()
        if i < last:
            x = update(i, x, x0, x0_prev)
            x0_prev = x0
    return x0


def sample_dpmpp_2m_sde(
    denoise: Denoise,
    x: torch.Tensor,
    schedule: SamplingSchedule,
    draw_noise: DrawNoise,
    progress: Optional[Progress] = None,
) -> torch.Tensor:
    """SAT's `VPSDEDPMPP2MSampler` loop from the initial noise x; returns the last step's x0 prediction."""
    alphas = schedule.alphas

    def update(i, x, x0, x0_prev):
        noise = draw_noise(x, i == 0)
        return dpmpp_2m_sde_step(x, x0, x0_prev, alphas[i - 1] if i else None, alphas[i], alphas[i + 1], noise)

    return run_sampler(denoise, x, schedule, update, progress)
