"""DDIM inversion and its replay (inversion.py): closed forms, diffusers' DDIM, exact round trips, and editing an
inverted latent with the small random DiT."""
import math

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler

from ditctrl import inversion
from ditctrl.attention import AttentionController, ControlSchedule, KVSharing, ReferenceAttention, TokenReweighting
from ditctrl.denoiser import guide, v_to_x0
from ditctrl.guided_denoiser import GuidedDenoiser
from ditctrl.inversion import ddim_step, invert_ddim, replay_ddim, sample_ddim
from ditctrl.schedule import SamplingSchedule, sampling_schedule
from reference_attention import ExplicitReweighting, explicit_attention
from tiny_models import small_dit

SHAPE = (2, 3, 4, 5, 6)  # (B, T, C, H, W)
LATENT = (1, 3, 16, 4, 6)  # one latent of the small DiT
UNIT_ROUNDOFF = 2.0**-24  # float32
SHARING = ControlSchedule(frozenset({1, 2, 3}), frozenset({2, 3}))


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def step_only_model(schedule: SamplingSchedule, latent: torch.Tensor, seed: int):
    """denoise(x, i, alpha, timestep) of a model whose x0 depends on the step alone: a fixed random tensor per step,
    `latent` at the last step (a model that ends on the data). It refuses a call whose step index, level and
    timestep are not one step's."""
    x0s = [randn(*latent.shape, seed=seed + i) for i in range(schedule.num_steps - 1)] + [latent]

    def denoise(x, i, alpha, timestep):
        assert (schedule.timesteps[i], schedule.alphas[i]) == (timestep, alpha)
        return x0s[i].repeat(x.shape[0] // latent.shape[0], 1, 1, 1, 1)

    return denoise, x0s


def test_first_inversion_step_is_the_closed_form_ddim_inverse_update():
    """From the clean latent x (level a' = 1) to a = alphas[3] of a 4-step schedule, with the model asked at step 3
    (timestep 249): the clean latent is its own x0 and its noise is the model's v, x̂0 = x, ε̂ = v, so
    x_prev = a·x̂0 + s·ε̂."""
    schedule = sampling_schedule(4)
    x, v = randn(*SHAPE, seed=0), randn(*SHAPE, seed=1)
    calls = []

    def denoise(x_in, i, alpha, timestep):
        calls.append((i, alpha, timestep, x_in))
        return v_to_x0(x_in, v, alpha)  # the model's x0 for its v at the level it was asked at

    trajectory = invert_ddim(denoise, x, schedule)
    a = schedule.alphas[3]
    s = math.sqrt(1 - a**2)
    assert (schedule.timesteps[3], schedule.alphas[4]) == (249.0, 1.0)
    assert calls[0][:3] == (3, a, 249.0) and calls[0][3] is x
    assert trajectory.shape == (5, *SHAPE) and torch.equal(trajectory[4], x)
    torch.testing.assert_close(trajectory[3], a * x + s * v, rtol=0, atol=1e-5)


def test_inversion_step_between_noisy_levels_is_the_closed_form_ddim_inverse_update():
    """From trajectory[3] (level a' = alphas[3]) to level a = alphas[2], with the model's x0 x̂ asked at step 2:
    ε̂ = (x - a'·x̂)/s', x_prev = a·x̂ + s·ε̂; and the DDIM step takes it back exactly."""
    schedule = sampling_schedule(4)
    x0_hat = randn(*SHAPE, seed=2)
    trajectory = invert_ddim(lambda x, i, alpha, t: x0_hat if i == 2 else x, randn(*SHAPE, seed=3), schedule)
    a, a_next = schedule.alphas[2], schedule.alphas[3]
    assert (a, a_next) == (0.3171045184135437, 0.6399747133255005)
    s, s_next = math.sqrt(1 - a**2), math.sqrt(1 - a_next**2)
    eps_hat = (trajectory[3] - a_next * x0_hat) / s_next
    torch.testing.assert_close(trajectory[2], a * x0_hat + s * eps_hat, rtol=0, atol=1e-6)
    torch.testing.assert_close(ddim_step(trajectory[2], x0_hat, a, a_next), trajectory[3], rtol=0, atol=1e-6)


def test_ddim_sampling_matches_diffusers_cogvideox_ddim_scheduler():
    """20 DDIM steps with a linear v-model on diffusers' own schedule (its alphas given to ours) agree with
    `CogVideoXDDIMScheduler.step` (eta 0), whose last step goes to alpha 1 as ours returns x0."""
    scheduler = CogVideoXDDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       set_alpha_to_one=True, snr_shift_scale=3.0, timestep_spacing="trailing",
                                       clip_sample=False)
    scheduler.set_timesteps(20)
    timesteps = [int(t) for t in scheduler.timesteps]
    schedule = SamplingSchedule(tuple(float(t) for t in timesteps),
                                tuple(math.sqrt(scheduler.alphas_cumprod[t].item()) for t in timesteps) + (1.0,))
    bias = randn(*SHAPE, seed=4)

    def v_model(x):
        return 0.3 * x + bias

    initial = randn(*SHAPE, seed=5)
    expected = initial
    for t in timesteps:
        expected = scheduler.step(v_model(expected), t, expected).prev_sample
    out = sample_ddim(lambda x, i, alpha, t: v_to_x0(x, v_model(x), alpha), initial, schedule)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


def round_trip(schedule, latent, invert_with=None):
    """(trajectory, the replayed target's latent at each step, the replay's result, the model's x0s) under
    `step_only_model`."""
    denoise, x0s = step_only_model(schedule, latent, seed=10)
    trajectory = invert_ddim(invert_with(denoise, schedule) if invert_with else denoise, latent, schedule)
    visited = []

    def recording(x, i, alpha, t):
        visited.append(x[latent.shape[0]:].clone())
        return denoise(x, i, alpha, t)

    out = replay_ddim(recording, trajectory, schedule)
    return trajectory, torch.stack(visited), out, x0s


def retrace_bound(num_steps, trajectory, x0s):
    """Float32 rounding the replay may leave against the trajectory it retraces. In real arithmetic the DDIM step
    undoes the inverse step exactly (same x0). Each computes a·x0 + s·(x - a'·x0)/s' (or the reverse) in a few
    rounded operations: at most 4u(|x| + |x0|) each way once the inverse's factor s/s' meets the step's s'/s
    (u = 2^-24); an error already made is multiplied by s'/s <= 1 at each later step. So after n steps at most
    8·n·u·M, M = the largest |x| + |x0| on the way."""
    largest = trajectory.abs().max() + max(x0.abs().max() for x0 in x0s)
    return 8 * num_steps * UNIT_ROUNDOFF * largest


@pytest.mark.parametrize("num_steps", [4, 10, 50])
def test_replaying_the_inversion_retraces_it_and_returns_the_latent(num_steps):
    """With an x0 that depends on the step alone the replay retraces the inverted trajectory step by step, within
    the rounding bound derived in `retrace_bound`, and returns the latent."""
    schedule, latent = sampling_schedule(num_steps), randn(*SHAPE, seed=9)
    trajectory, visited, out, x0s = round_trip(schedule, latent)
    assert trajectory.shape == (num_steps + 1, *SHAPE) and torch.equal(trajectory[-1], latent)
    assert torch.equal(visited[0], trajectory[0])
    assert (visited - trajectory[:-1]).abs().max() <= retrace_bound(num_steps, trajectory, x0s)
    assert torch.equal(out, latent)


def off_by_one_timestep(denoise, schedule):
    """What an index error in the inversion loop does: the model asked at the next step's timestep and level."""
    def shifted(x, i, alpha, timestep):
        j = min(i + 1, schedule.num_steps - 1)
        return denoise(x, j, schedule.alphas[j], schedule.timesteps[j])
    return shifted


def flipped_sign_inverse(x_next, x0, alpha, alpha_next):
    s, s_next = math.sqrt(1 - alpha**2), math.sqrt(1 - alpha_next**2)
    if alpha_next >= 1:
        return alpha * x_next - (alpha * x_next - x0)
    return alpha * x0 - s * (x_next - alpha_next * x0) / s_next


@pytest.mark.parametrize("mistake", ["off_by_one_timestep", "flipped_sign"])
def test_the_retrace_check_catches_an_index_or_sign_error_in_the_schedule(mistake, monkeypatch):
    """The check above has teeth: it fails by orders of magnitude for an inversion that asks the model one timestep
    off, or adds the noise with the wrong sign."""
    schedule, latent = sampling_schedule(10), randn(*SHAPE, seed=9)
    invert_with = off_by_one_timestep if mistake == "off_by_one_timestep" else None
    if mistake == "flipped_sign":
        monkeypatch.setattr(inversion, "ddim_inverse_step", flipped_sign_inverse)
    trajectory, visited, _, x0s = round_trip(schedule, latent, invert_with)
    assert (visited - trajectory[:-1]).abs().max() > 1000 * retrace_bound(10, trajectory, x0s)


def test_inversion_and_replay_ask_the_model_at_the_sampling_steps():
    schedule, calls = sampling_schedule(5), []

    def denoise(x, i, alpha, timestep):
        calls.append((i, alpha, timestep))
        return torch.zeros_like(x)

    wrapped = []
    trajectory = invert_ddim(denoise, torch.zeros(SHAPE), schedule,
                             progress=lambda steps: wrapped.append(steps) or steps)
    assert calls == [(i, schedule.alphas[i], schedule.timesteps[i]) for i in reversed(range(5))]
    assert wrapped == [range(4, -1, -1)]
    calls.clear()
    replay_ddim(denoise, trajectory, schedule)
    assert calls == [(i, schedule.alphas[i], schedule.timesteps[i]) for i in range(5)]


def test_replay_rejects_a_trajectory_of_another_step_count():
    with pytest.raises(ValueError, match="holds 5 latents; a 10-step schedule replays 11"):
        replay_ddim(lambda x, i, a, t: x, torch.zeros(5, *SHAPE), sampling_schedule(10))


def test_constant_guidance_is_the_scale_at_every_timestep():
    """dynamic_cfg=False: x0 = x0_u + 6·(x0_c - x0_u) at t = 999 and t = 19 alike."""
    model = small_dit()
    guided = GuidedDenoiser(model, sampler_steps=4, cfg_steps=4, cfg_scale=6.0, dynamic_cfg=False)
    x, cond = randn(*LATENT, seed=20), randn(1, 7, 24, seed=21)
    with torch.no_grad():
        for alpha, t in ((0.0, 999.0), (0.97, 19.0)):
            snapped = guided.table[(guided.table - alpha).abs().argmin()].item()
            v = model(torch.cat([x, x]), torch.full((2,), t), torch.cat([torch.zeros_like(cond), cond]))
            x0_u, x0_c = v_to_x0(torch.cat([x, x]), v, snapped).chunk(2)
            torch.testing.assert_close(guided(x, 0, alpha, t, cond, torch.zeros_like(cond)), guide(x0_u, x0_c, 6.0))


# --- editing an inverted latent with the small random DiT -------------------------------------------------------

def guided_denoise(model, cond, guidance=6.0):
    """denoise for rows conditioned by `cond` (B, L, D), zero unconditional rows, constant guidance."""
    guided = GuidedDenoiser(model, sampler_steps=4, cfg_steps=4, cfg_scale=guidance, dynamic_cfg=False)
    return lambda x, i, alpha, t: guided(x, i, alpha, t, cond, torch.zeros_like(cond))


@pytest.fixture(scope="module")
def inverted():
    """(model, source condition, target condition, 4-step schedule, trajectory of an inverted random latent)."""
    model = small_dit()
    source, target = randn(1, 7, 24, seed=31), randn(1, 7, 24, seed=32)
    schedule = sampling_schedule(4)
    model.set_controller(AttentionController())
    with torch.no_grad():
        trajectory = invert_ddim(guided_denoise(model, source), randn(*LATENT, seed=30), schedule)
    return model, source, target, schedule, trajectory


def edit(model, controller, trajectory, schedule, source, target, seen=None):
    model.set_controller(controller)
    denoise = guided_denoise(model, torch.cat([source, target]))

    def recording(x, i, alpha, t):
        if seen is not None:
            seen.append(x[:1].clone())
        return denoise(x, i, alpha, t)

    with torch.no_grad():
        return replay_ddim(recording, trajectory, schedule)


def test_edit_with_the_source_prompt_and_no_controller_is_the_reconstruction_bit_for_bit(inverted):
    """The replayed source rows do not reach the target without a controller: the edit equals, bit for bit, the
    target row of the same DDIM sampling where the source row is sampled freely instead of replayed."""
    model, source, _, schedule, trajectory = inverted
    seen = []
    edited = edit(model, AttentionController(), trajectory, schedule, source, source, seen)
    with torch.no_grad():
        free = sample_ddim(guided_denoise(model, torch.cat([source, source])),
                           torch.cat([trajectory[0], trajectory[0]]), schedule)
    assert torch.equal(edited[0], free[1])
    assert all(torch.equal(x, trajectory[i]) for i, x in enumerate(seen))  # the source rows were the trajectory
    assert not torch.allclose(free[0], trajectory[-1], atol=1e-2)  # which is not where free sampling goes


def test_reconstruction_error_shrinks_with_the_step_size():
    """DDIM inversion is a first-order approximation (the model's x0 of x_{i+1} stands for its x0 of x_i): with the
    DiT (guidance 1) the round trip's error falls as the steps grow, to under half from 10 to 40 steps (measured:
    0.43, 0.27, 0.19 of the latent's norm at 10, 20, 40 steps)."""
    model = small_dit()
    model.set_controller(AttentionController())
    latent, cond = randn(*LATENT, seed=40), randn(1, 7, 24, seed=41)
    errors = []
    for steps in (10, 20, 40):
        schedule = sampling_schedule(steps)
        with torch.no_grad():
            trajectory = invert_ddim(guided_denoise(model, cond, 1.0), latent, schedule)
            reconstruction = replay_ddim(guided_denoise(model, torch.cat([cond, cond]), 1.0), trajectory, schedule)
        errors.append(((reconstruction - latent).norm() / latent.norm()).item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.5 * errors[0]


class SourceBranchKV(AttentionController):
    """Plain explicit attention over the source rows alone ([u_source; c_source]), keeping each layer's K and V."""

    def __init__(self):
        super().__init__()
        self.kv = {}

    def __call__(self, q, k, v, layer, text_length):
        self.kv[layer] = (k, v)
        return explicit_attention(q, k, v)


class TargetBranchWithSourceKV(AttentionController):
    """The target rows alone ([u_target; c_target]); in controlled (step, layer)s their queries attend to the
    recorded source K/V (`concatenate`: to their own followed by the source's), explicitly."""

    def __init__(self, schedule, source: SourceBranchKV, concatenate: bool):
        super().__init__(schedule)
        self.source, self.concatenate = source, concatenate

    def __call__(self, q, k, v, layer, text_length):
        if not self.active(layer):
            return explicit_attention(q, k, v)
        k_source, v_source = self.source.kv[layer]
        if self.concatenate:
            return explicit_attention(q, torch.cat([k, k_source], dim=2), torch.cat([v, v_source], dim=2))
        return explicit_attention(q, k_source, v_source)


def edit_explicitly(model, trajectory, schedule, source, target, concatenate):
    """The edit computed branch by branch: at step i the source branch alone runs on trajectory[i] and keeps its
    K/V, then the target branch alone runs with them; the target's DDIM step is written out."""
    recorder = SourceBranchKV()
    injector = TargetBranchWithSourceKV(SHARING, recorder, concatenate)
    source_branch, target_branch = guided_denoise(model, source), guided_denoise(model, target)
    x = trajectory[0]
    with torch.no_grad():
        for i in range(schedule.num_steps):
            a, a_next = schedule.alphas[i], schedule.alphas[i + 1]
            model.set_controller(recorder)
            source_branch(trajectory[i], i, a, schedule.timesteps[i])
            model.set_controller(injector)
            x0 = target_branch(x, i, a, schedule.timesteps[i])
            s, s_next = math.sqrt(1 - a**2), math.sqrt(1 - a_next**2)
            x = a_next * x0 + s_next * (x - a * x0) / s
    return x0


@pytest.mark.parametrize("controller, concatenate", [(KVSharing, False), (ReferenceAttention, True)],
                         ids=["word_swap_kv_sharing", "reference_attention"])
def test_edit_of_an_inverted_source_equals_the_explicit_branch_by_branch_computation(inverted, controller,
                                                                                    concatenate):
    """Word swap (KV-sharing) and reference attention on an inverted source: the pair-batch replay equals the
    target branch run alone with the replayed source branch's K/V (N×N softmax), which plain attention does not."""
    model, source, target, schedule, trajectory = inverted
    edited = edit(model, controller(SHARING), trajectory, schedule, source, target)
    reference = edit_explicitly(model, trajectory, schedule, source, target, concatenate)
    plain = edit(model, AttentionController(), trajectory, schedule, source, target)
    torch.testing.assert_close(edited, reference, rtol=0, atol=1e-4)
    assert not torch.allclose(plain, reference, atol=1e-2)


def test_reweight_on_an_inverted_source_equals_the_explicit_reweighting(inverted):
    """Reweighting the target's tokens 1 and 2 (scale 0, source K/V before step 2) on an inverted source equals the
    explicit N×N reweighting in the same replay."""
    model, source, target, schedule, trajectory = inverted
    reweighting = dict(tokens=[1, 2], scale=0.0, kv_switch_step=2)
    edited = edit(model, TokenReweighting(SHARING, **reweighting), trajectory, schedule, source, target)
    reference = edit(model, ExplicitReweighting(SHARING, **reweighting), trajectory, schedule, source, target)
    plain = edit(model, AttentionController(), trajectory, schedule, source, target)
    torch.testing.assert_close(edited, reference, rtol=0, atol=1e-4)
    assert not torch.allclose(plain, reference, atol=1e-2)
