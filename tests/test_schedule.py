"""Noise schedule, sampling schedule, alpha quantisation and dynamic CFG against reference values and diffusers."""

import math

import pytest
import torch
from diffusers import CogVideoXDPMScheduler

from ditctrl.denoiser import dynamic_cfg_scale, quantize_alpha, table_index
from ditctrl.schedule import (
    SamplingSchedule,
    denoiser_table,
    sampling_schedule,
    shifted_alphas_cumprod,
)

# SAT's schedule (docs/model.md, "Noise schedule"); these values agree with SAT's code on CPU to one float32 ulp.
SPEC_TABLE = {0: 0.99872637, 1: 0.99739689, 19: 0.97291982, 499: 0.30978954, 979: 0.00521482, 998: 0.00024961, 999: 0.0}
SPEC_ALPHAS = {
    0: 0.0, 1: 0.00522029, 2: 0.01092453, 3: 0.01713505, 4: 0.02387295, 45: 0.85580373,
    46: 0.88635218, 47: 0.91635853, 48: 0.94562316, 49: 0.97393978, 50: 1.0,
}  # fmt: skip
SPEC_CFG_SCALES = [float(g) for g in """
2.291 2.544 6.974 6.420 2.788 4.272 1.038 4.170 1.618 6.983 1.005 2.872 6.977 1.633 4.330 2.437 6.377
6.007 3.448 3.198 1.655 6.610 1.195 4.295 6.985 1.521 1.762 1.058 4.128 1.482 2.003 5.948 4.143 6.531
6.140 7.000 6.168 1.120 2.098 6.685 6.999 2.343 6.213 1.251 7.000 6.864 1.064 1.000 1.000 1.123
""".split()]
FLOAT32_ULP_NEAR_1 = 6e-8


def diffusers_dpm_scheduler() -> CogVideoXDPMScheduler:
    """diffusers' CogVideoX DPM scheduler configured as SAT's schedule (docs/model.md, "Noise schedule"), 50 steps."""
    scheduler = CogVideoXDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
        clip_sample=False,
    )
    scheduler.set_timesteps(50)
    return scheduler


@pytest.fixture(scope="module")
def diffusers_sqrt_alpha_bar():
    """diffusers' sqrt(alphas_cumprod), float64 (1000,)."""
    return diffusers_dpm_scheduler().alphas_cumprod.sqrt()


def test_denoiser_table_equals_diffusers(diffusers_sqrt_alpha_bar):
    table = denoiser_table()
    assert table.dtype == torch.float32 and table.shape == (1000,)
    assert (table.double() - diffusers_sqrt_alpha_bar).abs().max() < 1e-7


@pytest.mark.parametrize("t, expected", SPEC_TABLE.items())
def test_denoiser_table_spec_values(t, expected):
    assert denoiser_table()[t].item() == pytest.approx(expected, abs=FLOAT32_ULP_NEAR_1 + 1e-9)


def test_shifted_alpha_bar_spec_values_and_snr_shift():
    shifted = shifted_alphas_cumprod(3.0)
    assert shifted.dtype == torch.float64
    assert shifted[[0, 19, 999]].tolist() == pytest.approx([0.9974543276, 0.9485587557, 0.0015582071], abs=1e-10)
    unshifted = shifted_alphas_cumprod(1.0)
    snr_ratio = (unshifted / (1 - unshifted)) / (shifted / (1 - shifted))
    assert torch.allclose(snr_ratio, torch.full_like(snr_ratio, 3.0), rtol=1e-12)


def test_sampling_timesteps_descend_in_steps_of_20():
    schedule = sampling_schedule()
    assert schedule.num_steps == 50
    assert schedule.timesteps == tuple(float(999 - 20 * k) for k in range(50))
    assert all(isinstance(t, float) for t in schedule.timesteps)


@pytest.mark.parametrize("i, expected", SPEC_ALPHAS.items())
def test_sampling_alphas_spec_values(i, expected):
    assert sampling_schedule().alphas[i] == pytest.approx(expected, abs=FLOAT32_ULP_NEAR_1 + 1e-9)


def test_sampling_alphas_rescaled_over_the_50_timesteps_only():
    alphas = sampling_schedule().alphas
    assert len(alphas) == 51 and alphas[0] == 0.0 and alphas[50] == 1.0
    assert all(a < b for a, b in zip(alphas, alphas[1:]))
    # The subset's first timestep (t = 19) keeps its un-rescaled value, unlike the full table.
    assert alphas[49] == pytest.approx(math.sqrt(shifted_alphas_cumprod()[19].item()), abs=1e-7)
    assert alphas[49] - denoiser_table()[19].item() > 1e-3


def test_sampling_alphas_deliberately_exceed_diffusers(diffusers_sqrt_alpha_bar):
    """SAT's subset rescale (followed here) is up to 0.105 % above diffusers' full-table sqrt(alpha_bar)."""
    schedule = sampling_schedule()
    ours = torch.tensor(schedule.alphas[1:50], dtype=torch.float64)
    theirs = diffusers_sqrt_alpha_bar[[int(t) for t in schedule.timesteps[1:]]]
    relative = ours / theirs - 1
    assert relative.min() > 0
    assert relative[0].item() == pytest.approx(1.05e-3, abs=0.02e-3)  # a_1 = 0.00522029 vs 0.00521482
    assert relative.max().item() == pytest.approx(1.05e-3, abs=0.02e-3)
    assert (ours - theirs).abs().max().item() == pytest.approx(1.0e-3, abs=0.05e-3)


def test_quantisation_snaps_the_last_8_steps_one_timestep_early():
    schedule, table = sampling_schedule(), denoiser_table()
    indices = table_index(torch.tensor(schedule.alphas[:50]), table)
    expected = [int(t) if i < 42 else int(t) - 1 for i, t in enumerate(schedule.timesteps)]
    assert indices.tolist() == expected
    assert table_index(schedule.alphas[49], table).item() == 18  # t = 19, unlike diffusers, which uses 19
    assert quantize_alpha(schedule.alphas[49], table).item() == table[18].item()


def test_table_index_keeps_shape_and_takes_first_index_on_ties():
    table = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert table_index(0.5, table).item() == 0
    assert table_index(torch.tensor([[2.6, 1.5]]), table).tolist() == [[3, 1]]


def original_dynamic_cfg(t: float, sampler_steps: int, cfg_steps: int, scale: float = 6.0, exp: float = 5.0) -> float:
    """The original's guidance scale, transcribed: its sampler passes `step_index = num_steps - timestep` (its own
    step count, the DDPM timestep value) and its `DynamicCFG(num_steps=cfg_steps)` divides by the guider's count."""
    step_index = sampler_steps - t
    return 1 + scale * (1 - math.cos(math.pi * (step_index / cfg_steps) ** exp)) / 2


def test_dynamic_cfg_scales_match_the_spec_list():
    scales = [dynamic_cfg_scale(t, scale=6.0, exp=5.0, sampler_steps=50, cfg_steps=50)
              for t in sampling_schedule().timesteps]
    assert scales == pytest.approx(SPEC_CFG_SCALES, abs=5e-4)


@pytest.mark.parametrize("sampler_steps", [5, 20, 50, 100])
@pytest.mark.parametrize("guider_steps", ["50", "the sampler's"])
def test_dynamic_cfg_scale_is_the_original_s_two_count_formula(sampler_steps, guider_steps):
    cfg_steps = 50 if guider_steps == "50" else sampler_steps
    for t in sampling_schedule(sampler_steps).timesteps:
        assert dynamic_cfg_scale(t, scale=6.0, exp=5.0, sampler_steps=sampler_steps, cfg_steps=cfg_steps) == \
            original_dynamic_cfg(t, sampler_steps, cfg_steps)


def test_dynamic_cfg_scale_depends_on_the_sampler_s_step_count():
    """At t = 999 the original's 5-step sampler guides with 6.827, its 50-step sampler with 2.291."""
    first = dict(t=999.0, scale=6.0, exp=5.0, cfg_steps=50)
    assert dynamic_cfg_scale(sampler_steps=5, **first) == pytest.approx(6.827, abs=5e-4)
    assert dynamic_cfg_scale(sampler_steps=50, **first) == pytest.approx(2.291, abs=5e-4)


def test_invalid_arguments_raise_value_error():
    with pytest.raises(ValueError, match="num_steps"):
        sampling_schedule(num_steps=1)
    with pytest.raises(ValueError, match="num_steps"):
        sampling_schedule(num_steps=50.0)
    with pytest.raises(ValueError, match="shift_scale"):
        denoiser_table(shift_scale=0.0)
    with pytest.raises(ValueError, match="alphas"):
        SamplingSchedule(timesteps=(999.0, 499.0), alphas=(0.0, 1.0))
    with pytest.raises(ValueError, match="exp"):
        dynamic_cfg_scale(999.0, scale=6.0, exp=5.5, sampler_steps=50, cfg_steps=50)
