"""Exact work sharing across windows: the shared multi-prompt sampler against the faithful pair path."""
import pytest
import torch

from benchmarking.work_counts import row_layer_count
from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from ditctrl.attention.mask_guided import MaskGuidedKVSharing
from ditctrl.guided_denoiser import GuidedDenoiser
from ditctrl.multi_prompt import MultiPromptDenoiser, long_noise, window_conditions
from ditctrl.sampler import sample_dpmpp_2m_sde
from ditctrl.schedule import sampling_schedule
from ditctrl.segment_layout import segment_layout
from test_multi_prompt import seeded_noise
from tiny_models import small_dit

NUM_STEPS = 4
KV_SCHEDULE = ControlSchedule(frozenset({1, 2}), frozenset({2, 3}))  # steps 0 and 3 uncontrolled, layers 0-1 unshared
FIVE_WINDOWS = segment_layout(3, 3, 1, 1)  # windows start at 0, 2, 4, 6, 8
TWO_WINDOWS = segment_layout(2, 3, 1, 0)
# fp32 difference between shared and faithful final latents (|values| up to 5.3) allowed where the DiT
# batches differ; measured on CPU: at most 1.9e-6 (a few ulps), from batch-dependent GEMM rounding.
BATCH_ROUNDING_ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return small_dit()


class RowCounting:
    """Mixin for a controller: counts (batch row × layer) evaluations, one attention call per layer."""
    row_layers = 0

    def __call__(self, q, k, v, layer, text_length):
        self.row_layers += q.shape[0]
        return super().__call__(q, k, v, layer, text_length)


class CountingPlain(RowCounting, AttentionController):
    pass


class CountingKVSharing(RowCounting, KVSharing):
    pass


def sample(model, controller, layout, **sharing):
    """Final long latent of a NUM_STEPS run on fixed noise, text and SDE noise."""
    model.set_controller(controller)
    embeds = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(7))
    cond = window_conditions(layout, embeds[:len(layout.base_windows)])
    denoiser = MultiPromptDenoiser(GuidedDenoiser(model, sampler_steps=NUM_STEPS, cfg_steps=NUM_STEPS), layout, cond,
                                   torch.zeros_like(cond), **sharing)
    x = long_noise(layout, channels=16, height=4, width=6, seed=3)
    with torch.no_grad():
        return sample_dpmpp_2m_sde(denoiser, x, sampling_schedule(NUM_STEPS), seeded_noise(5))


def test_split_forward_is_forward_bitwise(model):
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(4, 3, 16, 4, 6, generator=gen), torch.randn(4, 7, 24, generator=gen)
    t = torch.full((4,), 959.0)
    model.set_controller(KVSharing(KV_SCHEDULE))
    with torch.no_grad():
        whole = model(x, t, context, step=1, pair=0)
        state = model.embed(x, t, context)
        model.controller.begin_forward(1, 0, state.token_grid)
        split = model.head(model.run_layers(model.run_layers(state, 0, 2), 2, 4))
        model.controller.begin_forward(0, 0, state.token_grid)
        plain_step = model.head(model.run_layers(state, 0, 4))
        assert torch.equal(model(x, t, context, step=0, pair=0), plain_step)
    assert torch.equal(whole, split)
    assert not torch.equal(whole, plain_step)  # the controller acted inside the split layer ranges


def test_run_layers_rejects_range_outside_model(model):
    with torch.no_grad():
        state = model.embed(torch.zeros(2, 3, 16, 4, 6), torch.zeros(2), torch.zeros(2, 7, 24))
    with pytest.raises(ValueError, match=r"\[2, 5\)"):
        model.run_layers(state, 2, 5)


@pytest.mark.parametrize("max_batch_windows", [1, 2, 3])
@pytest.mark.parametrize("make_controller", [AttentionController, lambda: KVSharing(KV_SCHEDULE)],
                         ids=["plain", "kv_sharing"])
def test_shared_equals_faithful(model, make_controller, max_batch_windows):
    faithful = sample(model, make_controller(), FIVE_WINDOWS, share_work=False)
    shared = sample(model, make_controller(), FIVE_WINDOWS, share_work=True, max_batch_windows=max_batch_windows)
    assert faithful.abs().max() > 0.1
    assert (shared - faithful).abs().max() <= BATCH_ROUNDING_ATOL


@pytest.mark.parametrize("make_controller", [AttentionController, lambda: KVSharing(KV_SCHEDULE)],
                         ids=["plain", "kv_sharing"])
def test_shared_equals_faithful_bitwise_for_the_same_batches(model, make_controller):
    """Two windows in one batch of 2: every DiT batch is (u_0, u_1, c_0, c_1), as in the pair path."""
    faithful = sample(model, make_controller(), TWO_WINDOWS, share_work=False)
    assert torch.equal(sample(model, make_controller(), TWO_WINDOWS, share_work=True, max_batch_windows=2), faithful)


def test_kv_sharing_acts_in_the_shared_path(model):
    plain = sample(model, AttentionController(), FIVE_WINDOWS)
    assert (sample(model, KVSharing(KV_SCHEDULE), FIVE_WINDOWS) - plain).abs().max() > 1e-4


@pytest.mark.parametrize("share_work", [False, True])
@pytest.mark.parametrize("max_batch_windows", [1, 2, 3])
@pytest.mark.parametrize("kv_sharing", [False, True])
def test_row_layer_count_matches_layer_calls(model, kv_sharing, max_batch_windows, share_work):
    controller = CountingKVSharing(KV_SCHEDULE) if kv_sharing else CountingPlain()
    sample(model, controller, FIVE_WINDOWS, share_work=share_work, max_batch_windows=max_batch_windows)
    steps = KV_SCHEDULE.steps if kv_sharing else ()
    expected = row_layer_count(FIVE_WINDOWS, NUM_STEPS, model.num_layers, steps, min(KV_SCHEDULE.layers), share_work)
    assert controller.row_layers == expected


def test_row_layer_count_for_five_windows_by_hand():
    # faithful: 4 steps × 4 pairs × 4 rows × 4 layers; shared: 2 plain steps × 10 rows × 4 layers
    # + 2 controlled steps × (10 rows × 2 layers + 16 rows × 2 layers)
    assert row_layer_count(FIVE_WINDOWS, 4, 4, {1, 2}, 2, share_work=False) == 256
    assert row_layer_count(FIVE_WINDOWS, 4, 4, {1, 2}, 2, share_work=True) == 80 + 104


def test_row_layer_count_rose():
    """rose: 3 prompts, (9, 2) -> 7 windows; 50 steps, 30 layers, KV-sharing on steps 2..24, layers 25..29."""
    rose = segment_layout(3, 13, 9, 2)
    faithful = row_layer_count(rose, 50, 30, range(2, 25), 25, share_work=False)
    shared = row_layer_count(rose, 50, 30, range(2, 25), 25, share_work=True)
    assert (faithful, shared) == (36_000, 22_150)
    assert faithful / shared == pytest.approx(1.625, abs=5e-4)


def test_mask_guided_unchanged_by_sharing(model):
    """Mask-guided keeps the pair path in its controlled steps; its other steps are shared."""
    layout = segment_layout(2, 3, 1, 1)  # 3 windows

    def mask_guided():
        return MaskGuidedKVSharing(KV_SCHEDULE, thres=0.3, ref_tokens=[1, 2], cur_tokens=[3])

    faithful = sample(model, mask_guided(), layout, share_work=False)
    shared = sample(model, mask_guided(), layout, share_work=True)
    assert (shared - faithful).abs().max() <= BATCH_ROUNDING_ATOL
    assert (faithful - sample(model, AttentionController(), layout)).abs().max() > 1e-4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_max_batch_windows_rejected(bad):
    layout = segment_layout(2, 3, 1, 0)
    with pytest.raises(ValueError, match="max_batch_windows"):
        MultiPromptDenoiser(None, layout, torch.zeros(2, 7, 24), torch.zeros(2, 7, 24), max_batch_windows=bad)


def test_mask_guided_is_refused_in_layer_ranges(model):
    """Its maps run across all layers of a forward, so splitting the forward would reset them: refused."""
    model.set_controller(MaskGuidedKVSharing(KV_SCHEDULE, thres=0.3, ref_tokens=[1], cur_tokens=[3]))
    guided = GuidedDenoiser(model, sampler_steps=NUM_STEPS, cfg_steps=NUM_STEPS)
    x, cond = torch.zeros(2, 3, 16, 4, 6), torch.zeros(2, 7, 24)
    with pytest.raises(ValueError, match="MaskGuidedKVSharing keeps state across layers"):
        guided.begin(x, 1, 959.0, cond, cond, 2)
