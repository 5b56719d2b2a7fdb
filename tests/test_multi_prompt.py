"""The multi-prompt sampler on a small random DiT."""
import torch

from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from ditctrl.guided_denoiser import GuidedDenoiser
from ditctrl.multi_prompt import MultiPromptDenoiser, long_noise, window_conditions
from ditctrl.sampler import sample_dpmpp_2m_sde
from ditctrl.schedule import sampling_schedule
from ditctrl.segment_layout import segment_layout
from tiny_models import small_dit


def seeded_noise(seed):
    """A deterministic noise policy, identical for every sampler that uses it."""
    gen = torch.Generator().manual_seed(seed)
    return lambda x, first_step: torch.randn(x.shape, generator=gen)


def test_overlapping_windows_share_initial_noise():
    layout = segment_layout(3, 13, 9, 2)
    noise = long_noise(layout, channels=4, height=2, width=3, seed=5)
    assert noise.shape == (1, 37, 4, 2, 3) and noise.dtype == torch.float32
    for k in range(layout.num_windows - 1):
        assert torch.equal(noise[:, layout.window(k)][:, -9:], noise[:, layout.window(k + 1)][:, :9])
    assert torch.equal(noise, long_noise(layout, channels=4, height=2, width=3, seed=5))


def test_window_conditions_interpolate():
    layout = segment_layout(2, 13, 9, 2)
    embeds = torch.randn(2, 7, 24)
    cond = window_conditions(layout, embeds)
    assert torch.equal(cond[0], embeds[0]) and torch.equal(cond[3], embeds[1])
    assert torch.allclose(cond[1], 2 / 3 * embeds[0] + 1 / 3 * embeds[1], atol=1e-6)
    assert torch.allclose(cond[2], 1 / 3 * embeds[0] + 2 / 3 * embeds[1], atol=1e-6)


def test_one_prompt_equals_single_prompt_sampler():
    model = small_dit()
    model.set_controller(KVSharing(ControlSchedule(frozenset(range(6)), frozenset(range(4)))))  # nothing to share
    schedule = sampling_schedule(6)
    guided = GuidedDenoiser(model, sampler_steps=6, cfg_steps=6)
    layout = segment_layout(1, 3, 1, 2)
    embeds = torch.randn(1, 7, 24)
    x = long_noise(layout, channels=16, height=4, width=6, seed=1)
    multi = MultiPromptDenoiser(guided, layout, window_conditions(layout, embeds), torch.zeros(1, 7, 24))
    with torch.no_grad():
        long_video = sample_dpmpp_2m_sde(multi, x.clone(), schedule, seeded_noise(0))
        single = sample_dpmpp_2m_sde(
            lambda x, i, a, t: guided(x, None, a, t, embeds, torch.zeros(1, 7, 24)), x.clone(), schedule, seeded_noise(0))
    # equal up to the blend's (x·w)/w rounding
    assert torch.allclose(long_video, single, rtol=1e-5, atol=1e-5)


class RecordingController(AttentionController):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __call__(self, q, k, v, layer, text_length):
        self.calls.append((self.step, self.pair, layer))
        return super().__call__(q, k, v, layer, text_length)


def original_counters(num_windows, num_forwards, num_layers):
    """The original's side-effect counters: cur_layer per layer; after each forward count_segment += 1 and,
    once it reaches S - 1, cur_step += 1 and count_segment = 0."""
    calls, cur_step, count_segment = [], 0, 0
    for _ in range(num_forwards):
        calls += [(cur_step, count_segment, layer) for layer in range(num_layers)]
        count_segment += 1
        if count_segment == num_windows - 1:
            count_segment, cur_step = 0, cur_step + 1
    return calls


def test_explicit_step_and_pair_equal_original_counters():
    model = small_dit()
    recorder = RecordingController()
    model.set_controller(recorder)
    layout = segment_layout(3, 3, 1, 1)  # 5 windows, 4 pairs
    embeds = torch.randn(3, 7, 24)
    multi = MultiPromptDenoiser(GuidedDenoiser(model, sampler_steps=4, cfg_steps=4), layout,
                                window_conditions(layout, embeds), torch.zeros(layout.num_windows, 7, 24), share_work=False)
    x = long_noise(layout, channels=16, height=4, width=6, seed=2)
    with torch.no_grad():
        sample_dpmpp_2m_sde(multi, x, sampling_schedule(4), seeded_noise(1))
    assert recorder.calls == original_counters(layout.num_windows, 4 * 4, model.num_layers)


def test_kv_sharing_changes_only_controlled_result():
    """Sharing on steps outside the run changes nothing; sharing inside changes the long video."""
    model = small_dit()
    layout = segment_layout(2, 3, 1, 1)
    embeds = torch.randn(2, 7, 24)
    cond = window_conditions(layout, embeds)
    x = long_noise(layout, channels=16, height=4, width=6, seed=3)

    def generate(controller):
        model.set_controller(controller)
        guided = GuidedDenoiser(model, sampler_steps=4, cfg_steps=4)
        multi = MultiPromptDenoiser(guided, layout, cond, torch.zeros_like(cond))
        with torch.no_grad():
            return sample_dpmpp_2m_sde(multi, x.clone(), sampling_schedule(4), seeded_noise(4))

    plain = generate(AttentionController())
    assert torch.equal(plain, generate(KVSharing(ControlSchedule(frozenset({10}), frozenset({1, 2})))))
    assert (plain - generate(KVSharing(ControlSchedule(frozenset({1, 2}), frozenset({1, 2}))))).abs().max() > 1e-4
