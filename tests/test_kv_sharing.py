"""KV-sharing invariants on a small random DiT."""
import pytest
import torch

from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from reference_attention import ExplicitKVSharing
from tiny_models import small_dit


@pytest.fixture(scope="module")
def model():
    return small_dit()


def pair_batch(seed, same=False):
    """x (4, T, C, H, W) in (u_s, u_t, c_s, c_t) order, timesteps (4,), context (4, 7, 24)."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(1, 3, 16, 4, 6, generator=gen)
    xt = xs.clone() if same else torch.randn(1, 3, 16, 4, 6, generator=gen)
    c_s = torch.randn(1, 7, 24, generator=gen)
    c_t = c_s.clone() if same else torch.randn(1, 7, 24, generator=gen)
    u = torch.zeros(1, 7, 24)
    return torch.cat([xs, xt, xs, xt]), torch.full((4,), 959.0), torch.cat([u, u, c_s, c_t])


def run(model, controller, batch, step):
    model.set_controller(controller)
    with torch.no_grad():
        return model(*batch, step=step, pair=0)


SCHEDULE = ControlSchedule(frozenset({2, 3}), frozenset({2, 3}))


def test_sharing_with_itself_changes_nothing(model):
    batch = pair_batch(0, same=True)
    plain = run(model, AttentionController(), batch, step=2)
    shared = run(model, KVSharing(SCHEDULE), batch, step=2)
    assert torch.allclose(plain, shared, atol=1e-6)


def test_outside_schedule_bitwise_plain(model):
    batch = pair_batch(1)
    plain = run(model, AttentionController(), batch, step=5)
    shared = run(model, KVSharing(SCHEDULE), batch, step=5)
    assert torch.equal(plain, shared)
    no_layers = KVSharing(ControlSchedule(frozenset({5}), frozenset()))
    assert torch.equal(plain, run(model, no_layers, batch, step=5))


def test_whole_dit_equals_explicit_kv_sharing_and_sources_stay_plain(model):
    """The DiT's output under KV-sharing equals the same DiT with explicit N×N source-K/V attention."""
    batch = pair_batch(2)
    plain = run(model, AttentionController(), batch, step=3)
    shared = run(model, KVSharing(SCHEDULE), batch, step=3)
    reference = run(model, ExplicitKVSharing(SCHEDULE), batch, step=3)
    assert torch.allclose(shared, reference, atol=1e-5)
    source, target = [0, 2], [1, 3]
    assert torch.allclose(plain[source], shared[source], atol=1e-6)
    assert not torch.allclose(plain[target], reference[target], atol=1e-3)  # the reference is not plain attention


def test_target_attends_to_source_keys_and_values():
    """At the attention level a shared target row equals ordinary attention against the source's K/V."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(4, 2, 10, 8, generator=gen) for _ in range(3))
    controller = KVSharing(ControlSchedule(frozenset({0}), frozenset({0})))
    controller.begin_forward(step=0)
    out = controller(q, k, v, layer=0, text_length=3)
    for target, source in ((1, 0), (3, 2)):
        expected = torch.softmax(q[target] @ k[source].transpose(-1, -2) / 8 ** 0.5, -1) @ v[source]
        assert torch.allclose(out[target], expected, atol=1e-5)
    for source in (0, 2):
        expected = torch.softmax(q[source] @ k[source].transpose(-1, -2) / 8 ** 0.5, -1) @ v[source]
        assert torch.allclose(out[source], expected, atol=1e-5)


def test_schedule_from_args_explicit_lists_win():
    class Args:
        start_step, end_step, start_layer, end_layer = 2, 25, 25, 30
        step_idx, layer_idx = None, None
    default = ControlSchedule.from_args(Args)
    assert default.steps == frozenset(range(2, 25)) and default.layers == frozenset(range(25, 30))
    Args.step_idx, Args.layer_idx = [7, 9], [1]
    explicit = ControlSchedule.from_args(Args)
    assert explicit.steps == {7, 9} and explicit.layers == {1}
    assert explicit.active(7, 1) and not explicit.active(8, 1) and not explicit.active(None, 1)


def test_every_configurable_controller_is_registered():
    from ditctrl.attention import CONTROLLERS
    from ditctrl.config import CONTROLLER_NAMES
    assert set(CONTROLLERS) == set(CONTROLLER_NAMES)
