"""Reference attention (the diffusers CogVideoX DDIM-inversion pipeline's attention) against explicit N×N attention."""
import pytest
import torch

from ditctrl.attention import AttentionController, ControlSchedule, KVSharing, ReferenceAttention, build_controller
from reference_attention import ExplicitReferenceAttention
from test_kv_sharing import pair_batch, run
from tiny_models import small_dit

SCHEDULE = ControlSchedule(frozenset({2, 3}), frozenset({2, 3}))


@pytest.fixture(scope="module")
def model():
    return small_dit()


def softmax_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v


def test_target_attends_over_its_own_then_the_source_keys_and_values():
    """A target row's output is softmax attention over the 2N keys [own; source], written out; sources are plain."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(4, 2, 10, 8, generator=gen) for _ in range(3))
    controller = ReferenceAttention(ControlSchedule(frozenset({0}), frozenset({0})))
    controller.begin_forward(step=0)
    out = controller(q, k, v, layer=0, text_length=3)
    for target, source in ((1, 0), (3, 2)):
        keys, values = torch.cat([k[target], k[source]], dim=1), torch.cat([v[target], v[source]], dim=1)
        torch.testing.assert_close(out[target], softmax_attention(q[target], keys, values), rtol=0, atol=1e-5)
        torch.testing.assert_close(out[source], softmax_attention(q[source], k[source], v[source]), rtol=0, atol=1e-5)


def test_a_target_identical_to_its_source_is_plain_attention():
    """Every key twice: each weight halves, the output is the same."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 10, 8, generator=gen).expand(4, -1, -1, -1) for _ in range(3))
    controller = ReferenceAttention(ControlSchedule(frozenset({0}), frozenset({0})))
    controller.begin_forward(step=0)
    torch.testing.assert_close(controller(q, k, v, layer=0, text_length=3), softmax_attention(q, k, v),
                               rtol=0, atol=1e-5)


def test_whole_dit_equals_explicit_reference_attention(model):
    batch = pair_batch(2)
    referenced = run(model, ReferenceAttention(SCHEDULE), batch, step=3)
    reference = run(model, ExplicitReferenceAttention(SCHEDULE), batch, step=3)
    plain = run(model, AttentionController(), batch, step=3)
    shared = run(model, KVSharing(SCHEDULE), batch, step=3)
    torch.testing.assert_close(referenced, reference, rtol=0, atol=1e-5)
    source, target = [0, 2], [1, 3]
    torch.testing.assert_close(referenced[source], plain[source], rtol=0, atol=1e-6)
    assert not torch.allclose(plain[target], reference[target], atol=1e-3)
    assert not torch.allclose(shared[target], reference[target], atol=1e-3)  # not KV-sharing either


def test_outside_its_schedule_it_is_plain_attention_bitwise(model):
    batch = pair_batch(1)
    assert torch.equal(run(model, ReferenceAttention(SCHEDULE), batch, step=5),
                       run(model, AttentionController(), batch, step=5))


def test_a_batch_that_is_not_source_target_pairs_is_refused():
    controller = ReferenceAttention(ControlSchedule(frozenset({0}), frozenset({0})))
    controller.begin_forward(step=0)
    q = torch.zeros(2, 2, 10, 8)
    with pytest.raises(ValueError, match="multiple of 4 rows"):
        controller(q, q, q, layer=0, text_length=3)


def test_registered_under_its_mixin_name_with_the_schedule_keys():
    class Args:
        start_step, end_step, start_layer, end_layer = 0, 50, 0, 30
        step_idx, layer_idx = None, [28, 29]
    controller = build_controller("ReferenceAttentionAdaLNMixin", Args, "unused")
    assert isinstance(controller, ReferenceAttention)
    assert controller.schedule == ControlSchedule(frozenset(range(50)), frozenset({28, 29}))
