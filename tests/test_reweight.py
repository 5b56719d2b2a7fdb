"""Token attention reweighting: the cheap path against the explicit N×N probability map."""
from types import SimpleNamespace

import pytest
import torch

from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from ditctrl.attention.reweight import TokenReweighting
from reference_attention import ExplicitReweighting
from tiny_models import small_dit
from test_kv_sharing import pair_batch, run

TEXT = 3  # text tokens in the raw q/k/v cases; the rest are video
TOKENS = [0, 2]
SCHEDULE = ControlSchedule(frozenset({1, 2, 3}), frozenset({2, 3}))
ALWAYS = ControlSchedule(frozenset({0, 1, 2}), frozenset({0}))


@pytest.fixture(scope="module")
def model():
    return small_dit()


def raw_qkv(seed, dim=8, length=10):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 2, length, dim, generator=gen) for _ in range(3)]


def reweighted_map(q, k, tokens, scale, additive=False):
    """The original's explicit map: softmax(q kᵀ/√d) with the (video, token) and (token, video) blocks scaled."""
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    block = torch.zeros(logits.shape[-2:], dtype=torch.bool)
    block[TEXT:, tokens] = True
    block[tokens, TEXT:] = True
    if additive:
        return torch.softmax(logits + scale * block, dim=-1)
    return torch.softmax(logits, dim=-1) * torch.where(block, scale, 1.0)


def controlled(controller, q, k, v, step):
    controller.begin_forward(step=step)
    return controller(q, k, v, layer=0, text_length=TEXT)


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0, -1.0])
@pytest.mark.parametrize("step,kv_from", [(2, (0, 1, 2, 3)), (1, (0, 0, 2, 2))])
def test_matches_the_explicit_scaled_map(scale, step, kv_from):
    """Targets (u_t, c_t) use their own K/V from the switch step on, their source's before; sources stay plain."""
    q, k, v = raw_qkv(0)
    out = controlled(TokenReweighting(ALWAYS, TOKENS, scale), q, k, v, step)
    for row, kv in enumerate(kv_from):
        row_scale = scale if row in (1, 3) else 1.0
        expected = reweighted_map(q[row], k[kv], TOKENS, row_scale) @ v[kv]
        assert torch.allclose(out[row], expected, atol=1e-5), row


@pytest.mark.parametrize("scale", [-5.0, 0.5, 2.0])
def test_additive_variant_matches_softmax_with_a_logit_bias(scale):
    q, k, v = raw_qkv(1)
    out = controlled(TokenReweighting(ALWAYS, TOKENS, scale, additive=True), q, k, v, step=2)
    for row in range(4):
        expected = reweighted_map(q[row], k[row], TOKENS, scale if row in (1, 3) else 0.0, additive=True) @ v[row]
        assert torch.allclose(out[row], expected, atol=1e-5), row


@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
def test_only_the_token_column_and_row_change(scale):
    """With V = identity the output is the effective probability map itself."""
    length = 10
    q, k, _ = raw_qkv(2, dim=length, length=length)
    identity = torch.eye(length).expand(4, 2, length, length)
    effective = controlled(TokenReweighting(ALWAYS, TOKENS, scale), q, k, identity, step=2)[[1, 3]]
    plain = torch.softmax(q[[1, 3]] @ k[[1, 3]].transpose(-1, -2) / length ** 0.5, dim=-1)
    block = torch.zeros(length, length, dtype=torch.bool)
    block[TEXT:, TOKENS] = True  # video queries -> tokens
    block[TOKENS, TEXT:] = True  # tokens -> video keys
    assert block.sum() == 2 * len(TOKENS) * (length - TEXT)
    assert torch.allclose(effective[..., ~block], plain[..., ~block], atol=1e-6)
    assert torch.allclose(effective[..., block], scale * plain[..., block], atol=1e-6)


def test_neutral_scale_is_plain_attention_after_the_switch_and_kv_sharing_before(model):
    batch = pair_batch(4)
    neutral = TokenReweighting(SCHEDULE, [0, 3, 6], 1.0, kv_switch_step=2)
    plain = run(model, AttentionController(), batch, step=2)
    assert torch.allclose(run(model, neutral, batch, step=2), plain, atol=1e-6)
    shared = run(model, KVSharing(SCHEDULE), batch, step=1)
    assert torch.allclose(run(model, neutral, batch, step=1), shared, atol=1e-6)


@pytest.mark.parametrize("step", [1, 3])  # before and after the K/V switch
def test_whole_dit_equals_the_explicit_reweighted_map_and_sources_stay_plain(model, step):
    batch = pair_batch(5)
    plain = run(model, AttentionController(), batch, step=step)
    reweighted = run(model, TokenReweighting(SCHEDULE, [2, 4], 0.5), batch, step=step)
    reference = run(model, ExplicitReweighting(SCHEDULE, [2, 4], 0.5), batch, step=step)
    assert torch.allclose(reweighted, reference, atol=1e-5)
    assert torch.allclose(reweighted[[0, 2]], plain[[0, 2]], atol=1e-6)
    assert not torch.allclose(reference[[1, 3]], plain[[1, 3]], atol=1e-3)  # the reference is not plain attention
    assert torch.equal(run(model, TokenReweighting(SCHEDULE, 2, 0.0), batch, step=4), run(
        model, AttentionController(), batch, step=4))


def test_out_of_range_token_raises_at_call():
    q, k, v = raw_qkv(3)
    with pytest.raises(ValueError, match="reweight_token_idx"):
        controlled(TokenReweighting(ALWAYS, [1, TEXT], 0.5), q, k, v, step=2)


@pytest.mark.parametrize("tokens,scale,switch", [
    ([], 0.5, 2), ([-1], 0.5, 2), ([True], 0.5, 2), (0, "0.5", 2), (0, float("nan"), 2), (0, True, 2), (0, 0.5, -1),
])
def test_bad_arguments_raise_on_construction(tokens, scale, switch):
    with pytest.raises(ValueError, match="reweight_"):
        TokenReweighting(ALWAYS, tokens, scale, switch)


def test_from_args():
    args = SimpleNamespace(start_step=0, end_step=50, start_layer=0, end_layer=30, step_idx=None, layer_idx=None,
                           reweight_token_idx=[5, 1, 5], reweight_scale=-5, reweight_kv_switch_step=3,
                           reweight_additive=False)
    controller = TokenReweighting.from_args(args, output_dir="unused")
    assert controller.tokens == (1, 5) and controller.scale == -5.0 and controller.kv_switch_step == 3
    assert controller.schedule.steps == frozenset(range(50)) and not controller.additive
    args.reweight_additive = True
    assert TokenReweighting.from_args(args, output_dir="unused").additive
