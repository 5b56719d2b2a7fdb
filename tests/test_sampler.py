"""SDE-DPM-Solver++(2M) and DDIM steps and loops: reference multipliers, diffusers parity, RNG policies, invariants."""

import math

import pytest
import torch
from test_schedule import diffusers_dpm_scheduler, original_dynamic_cfg

from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from ditctrl.config import MODEL_CONFIG, TINY_MODEL_CONFIG, load_config
from ditctrl.denoiser import guide, quantize_alpha, v_to_x0
from ditctrl.generation import encode_prompt_sets, sample_clip, sample_long
from ditctrl.multi_prompt import long_noise
from ditctrl.pipeline import Pipeline
from ditctrl.sampler import (
    dpmpp_2m_sde_multipliers,
    dpmpp_2m_sde_step,
    full_noise_discarding_first,
    sample_dpmpp_2m_sde,
    shared_row_noise,
)
from ditctrl.schedule import SamplingSchedule, denoiser_table, sampling_schedule
from ditctrl.segment_layout import segment_layout
from ditctrl.synthetic_folders import ensure_synthetic_checkpoints

SHAPE = (2, 3, 4, 5, 6)  # (B, T, C, H, W), small

# Reference multipliers (h, r, m1, m2, m3, m4, sigma) in float64 from the float32 a_i (docs/model.md, "Sampler").
SPEC_MULTIPLIERS = {
    1: (0.738504, math.inf, 0.477806, -0.008430, 1.0, 0.0, 0.878401),
    25: (0.073504, 1.018381, 0.922137, -0.045287, 1.490976, 0.490976, 0.348872),
    48: (0.390045, 0.613158, 0.472091, -0.527520, 1.815450, 0.815450, 0.166920),
}


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def affine_x0(x, step_index, alpha, timestep):
    """Stub guided denoiser: a fixed affine function of x."""
    return 0.5 * x + 0.25


@pytest.mark.parametrize("i", SPEC_MULTIPLIERS)
def test_multipliers_match_spec_table(i):
    a = sampling_schedule().alphas
    got = [float(m) for m in dpmpp_2m_sde_multipliers(a[i - 1], a[i], a[i + 1], dtype=torch.float64)]
    # 5e-6: these reference a_i differ from SAT's CPU arithmetic by one float32 ulp, which r amplifies.
    assert got == pytest.approx(SPEC_MULTIPLIERS[i], abs=5e-6)


def test_first_step_from_pure_noise_is_finite_and_ignores_x():
    a_1 = sampling_schedule().alphas[1]
    x, x0, noise = randn(*SHAPE, seed=0), randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    expected = a_1 * x0 + math.sqrt(1 - a_1**2) * noise
    for state in (x, 1e6 * x):
        out = dpmpp_2m_sde_step(state, x0, None, None, 0.0, a_1, noise)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_second_step_is_first_order():
    a = sampling_schedule().alphas
    x, x0, x0_prev, noise = (randn(*SHAPE, seed=s) for s in range(4))
    second_order = dpmpp_2m_sde_step(x, x0, x0_prev, a[0], a[1], a[2], noise)
    assert torch.equal(second_order, dpmpp_2m_sde_step(x, x0, None, None, a[1], a[2], noise))
    assert not torch.equal(
        dpmpp_2m_sde_step(x, x0, x0_prev, a[1], a[2], a[3], noise),
        dpmpp_2m_sde_step(x, x0, None, None, a[2], a[3], noise),
    )


def test_second_order_step_without_a_prev_raises():
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="a_prev"):
        dpmpp_2m_sde_step(x, x, x, None, 0.5, 0.6, x)


@pytest.mark.parametrize("i", [0, 1, 2, 25, 48])
def test_step_matches_diffusers(i):
    """Fed diffusers' own sqrt(alpha_bar) and the same generator stream, one step agrees with its `step`."""
    scheduler = diffusers_dpm_scheduler()
    timesteps = [int(t) for t in scheduler.timesteps]
    alpha = [math.sqrt(scheduler.alphas_cumprod[t].item()) for t in timesteps] + [1.0]
    x, v, x0_prev = randn(*SHAPE, seed=10), randn(*SHAPE, seed=11), randn(*SHAPE, seed=12)
    x0_prev = x0_prev if i else None

    expected_x, expected_x0 = scheduler.step(
        v, x0_prev, timesteps[i], timesteps[i - 1] if i else None, x, generator=torch.Generator().manual_seed(i)
    )

    x0 = v_to_x0(x, v, alpha[i])
    torch.manual_seed(i)
    noise = full_noise_discarding_first(x, i == 0)
    out = dpmpp_2m_sde_step(x, x0, x0_prev, alpha[i - 1] if i else None, alpha[i], alpha[i + 1], noise)
    torch.testing.assert_close(x0, expected_x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, expected_x, rtol=0, atol=2e-6)


def test_full_loop_matches_diffusers_on_its_schedule():
    """50 steps with a linear v-model; the only schedule difference from SAT (alphas, no snapping) is removed."""
    scheduler = diffusers_dpm_scheduler()
    timesteps = [int(t) for t in scheduler.timesteps]
    schedule = SamplingSchedule(
        timesteps=tuple(float(t) for t in timesteps),
        alphas=tuple(math.sqrt(scheduler.alphas_cumprod[t].item()) for t in timesteps) + (1.0,),
    )
    bias = randn(*SHAPE, seed=20)

    def v_model(x):
        return 0.3 * x + bias

    initial = randn(*SHAPE, seed=21)
    generator, expected, x0_prev = torch.Generator().manual_seed(0), initial, None
    for i, t in enumerate(timesteps):
        t_back = timesteps[i - 1] if i else None
        expected, x0_prev = scheduler.step(v_model(expected), x0_prev, t, t_back, expected, generator=generator)

    torch.manual_seed(0)
    def denoise(x, step_index, alpha, timestep):
        return v_to_x0(x, v_model(x), alpha)

    out = sample_dpmpp_2m_sde(denoise, initial, schedule, full_noise_discarding_first)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def rng_state_after(shapes):
    """Global CPU RNG state after seeding with 0 and drawing one randn of each shape."""
    torch.manual_seed(0)
    for shape in shapes:
        torch.randn(shape)
    return torch.get_rng_state()


@pytest.mark.parametrize(
    "draw_noise, noise_shapes",
    [(full_noise_discarding_first, [SHAPE] * (1 + 2 * 48)), (shared_row_noise, [SHAPE[1:]] * 49)],
    ids=["multi_prompt", "shared_row"],
)
def test_loop_is_reproducible_and_draws_the_reference_noise_count(draw_noise, noise_shapes):
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        initial = torch.randn(SHAPE)
        outputs.append(sample_dpmpp_2m_sde(affine_x0, initial, sampling_schedule(), draw_noise))
        state = torch.get_rng_state()
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(state, rng_state_after([SHAPE] + noise_shapes))


def test_shared_row_noise_is_identical_across_rows():
    torch.manual_seed(0)
    noise = shared_row_noise(torch.zeros(SHAPE), first_step=False)
    assert noise.shape == SHAPE and torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[0], shared_row_noise(torch.zeros(SHAPE), first_step=False)[0])

    identical_rows = randn(1, *SHAPE[1:], seed=30).expand(SHAPE).clone()
    shared = sample_dpmpp_2m_sde(affine_x0, identical_rows, sampling_schedule(), shared_row_noise)
    independent = sample_dpmpp_2m_sde(affine_x0, identical_rows, sampling_schedule(), full_noise_discarding_first)
    assert torch.equal(shared[0], shared[1])
    assert not torch.equal(independent[0], independent[1])


def test_loop_passes_schedule_to_denoise_and_returns_last_x0():
    schedule, calls, wrapped = sampling_schedule(), [], []

    def denoise(x, step_index, alpha, timestep):
        calls.append((step_index, alpha, timestep))
        return torch.full_like(x, float(step_index))

    def progress(steps):
        wrapped.append(steps)
        return steps

    torch.manual_seed(0)
    out = sample_dpmpp_2m_sde(denoise, torch.randn(SHAPE), schedule, full_noise_discarding_first, progress)
    assert calls == [(i, schedule.alphas[i], schedule.timesteps[i]) for i in range(50)]
    assert wrapped == [range(50)]
    assert out.dtype == torch.float32 and torch.equal(out, torch.full(SHAPE, 49.0))


def test_loop_rejects_non_float32_state():
    with pytest.raises(ValueError, match="float32"):
        sample_dpmpp_2m_sde(affine_x0, torch.zeros(SHAPE, dtype=torch.float16), sampling_schedule(), shared_row_noise)


def test_v_to_x0_inverts_the_v_parameterisation_per_row():
    x0, eps = randn(*SHAPE, seed=50), randn(*SHAPE, seed=51)
    alpha = torch.tensor([0.3, 0.9])[:, None, None, None, None]
    sigma = (1 - alpha**2).sqrt()
    x, v = alpha * x0 + sigma * eps, alpha * eps - sigma * x0
    out = v_to_x0(x, v.half(), alpha.flatten())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-3)  # v was rounded to float16
    torch.testing.assert_close(v_to_x0(x, v, alpha.flatten()), x0, rtol=0, atol=1e-6)


def test_guide_interpolates_and_extrapolates():
    uncond, cond = randn(*SHAPE, seed=60), randn(*SHAPE, seed=61)
    assert torch.equal(guide(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(guide(uncond, cond, 1.0), cond)
    torch.testing.assert_close(guide(uncond, cond, 6.0), uncond + 6 * (cond - uncond))


STEPS_NOT_50 = 5  # the original's guider keeps its own 50 steps: the scale differs from a 50-step run's


@pytest.fixture(scope="module")
def five_step_pipeline():
    """The tiny model's pipeline with a 5-step sampler (guider count 50, as configured); two prompts' T5 features."""
    cfg = load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], overrides=[
        f"model.sampler_config.params.num_steps={STEPS_NOT_50}"], require_prompts=False)
    assert cfg.model.sampler_config.params.cfg_num_steps == 50
    ensure_synthetic_checkpoints(cfg)
    pipeline = Pipeline(cfg, "cpu")
    with torch.no_grad():
        embeds, = encode_prompt_sets(pipeline, [["a red car on a street", "a blue car on a street"]])
    pipeline.load_dit()
    return pipeline, embeds


def independent_clip(pipeline, cond, noise, cfg_scale):
    """The clip sampler written out: the DiT on [x; x] with [zeros; cond], x0 snapped to the denoiser table, guided by
    `cfg_scale(t)`, one SDE noise per step shared by the rows."""
    schedule, table, dit = pipeline.schedule, denoiser_table(pipeline.sampler_params["shift_scale"]), pipeline.dit
    context = torch.cat([torch.zeros_like(cond), cond])
    x, x0_prev = noise.expand(len(cond), *noise.shape[1:]).contiguous(), None
    for i, (t, a) in enumerate(zip(schedule.timesteps, schedule.alphas)):
        x2 = torch.cat([x, x])
        v = dit(x2, torch.full((len(x2),), t), context, step=i)
        x0_uncond, x0_cond = v_to_x0(x2, v, quantize_alpha(a, table).item()).chunk(2)
        x0 = x0_uncond + cfg_scale(t) * (x0_cond - x0_uncond)
        if i == schedule.num_steps - 1:
            return x0
        noise_i = torch.randn_like(x[0]).expand_as(x)
        x = dpmpp_2m_sde_step(x, x0, x0_prev, schedule.alphas[i - 1] if i else None, a, schedule.alphas[i + 1], noise_i)
        x0_prev = x0


def test_a_5_step_clip_equals_the_dit_guided_by_the_original_s_formula(five_step_pipeline):
    """sample_clip (edits, reweight, visualisation, isolated clips) at 5 steps equals the loop written out with the
    original's two-count scale (5 - t) / 50, and not with one count (50 - t) / 50."""
    pipeline, embeds = five_step_pipeline
    noise = randn(1, 3, 16, 4, 6, seed=70)
    results = {}
    for name, scale in (("ours", None), ("original", lambda t: original_dynamic_cfg(t, STEPS_NOT_50, 50)),
                        ("one count", lambda t: original_dynamic_cfg(t, 50, 50))):
        torch.manual_seed(0)
        with torch.no_grad():
            results[name] = (sample_clip(pipeline, embeds, AttentionController(), noise) if scale is None
                             else independent_clip(pipeline, embeds, noise, scale))
    torch.testing.assert_close(results["ours"], results["original"], rtol=0, atol=1e-6)
    assert (results["ours"] - results["one count"]).norm() > 0.1 * results["ours"].norm()


def test_a_5_step_long_video_guides_with_the_original_s_formula(five_step_pipeline, monkeypatch):
    """sample_long at 5 steps equals the same run whose guider computes the transcribed two-count scale."""
    pipeline, embeds = five_step_pipeline
    layout = segment_layout(2, 3, 1, 1)  # 3 windows, 2 pairs
    noise = long_noise(layout, 16, 4, 6, seed=71)
    controller = KVSharing(ControlSchedule(frozenset({1, 2}), frozenset(range(20, 30))))

    def long_video():
        torch.manual_seed(0)
        with torch.no_grad():
            return sample_long(pipeline, layout, embeds, controller, noise)

    ours = long_video()
    for counts, equal in (((STEPS_NOT_50, 50), True), ((50, 50), False)):
        monkeypatch.setattr("ditctrl.guided_denoiser.dynamic_cfg_scale",
                            lambda t, counts=counts, **_: original_dynamic_cfg(t, *counts))
        assert torch.equal(long_video(), ours) == equal
