"""The DiT blocks' element-wise steps: eager ones equal the plain formulas bitwise; compiled ones (args.compile_dit)
equal the eager DiT within an fp32 tolerance, with one compiled graph per step shared by every layer."""
import pytest
import torch
import torch.nn.functional as F

from ditctrl import block_elementwise
from ditctrl.attention import AttentionController, ControlSchedule, KVSharing
from tiny_models import small_dit

# Compiled steps may fuse and reorder fp32 operations (FMA contraction, other LayerNorm reduction order): a few
# ulps per operation, carried through the 4 layers. Measured about 3e-7 of the output's largest value; 30x margin.
COMPILED_RELATIVE_TOLERANCE = 1e-5


def inductor_unavailable() -> str | None:
    """Why inductor cannot compile for the CPU here (no C++ compiler), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
    except Exception as error:  # noqa: BLE001 - any failure to find a compiler means: cannot compile
        return f"torch.compile (inductor) cannot compile on this machine: {type(error).__name__}: {error}"
    return None


def segments(batch=2, tokens=11, width=16, text_length=3, seed=0):
    """x (B, N, d), an update of the same shape, LayerNorm weight and bias, and six (B, d) modulation tensors."""
    gen = torch.Generator().manual_seed(seed)
    x, update = torch.randn(2, batch, tokens, width, generator=gen)
    weight, bias = torch.randn(2, width, generator=gen)
    mods = torch.randn(6, batch, width, generator=gen)
    return x, update, weight, bias, mods, text_length


def test_eager_steps_equal_the_plain_formulas_bitwise_and_leave_their_input_alone():
    x, update, weight, bias, mods, text_length = segments()
    t_shift, t_scale, shift, scale, t_gate, gate = mods
    text, video = x[:, :text_length], x[:, text_length:]
    norm = lambda part: F.layer_norm(part, (x.shape[-1],), weight, bias, 1e-5)  # noqa: E731
    want_normed = torch.cat([torch.addcmul(t_shift[:, None], norm(text), 1 + t_scale[:, None]),
                             torch.addcmul(shift[:, None], norm(video), 1 + scale[:, None])], dim=1)
    want_hidden = torch.cat([text + t_gate[:, None] * update[:, :text_length],
                             video + gate[:, None] * update[:, text_length:]], dim=1)
    x_before = x.clone()

    normed = block_elementwise.modulated_norm(x, text_length, weight, bias, 1e-5, t_shift, t_scale, shift, scale)
    hidden = block_elementwise.gated_residual(x, update.clone(), text_length, t_gate, gate)
    hidden_too, normed_after = block_elementwise.post_attention(x, update.clone(), text_length, t_gate, gate, weight,
                                                                bias, 1e-5, t_shift, t_scale, shift, scale)
    assert torch.equal(normed, want_normed)
    assert torch.equal(hidden, want_hidden) and torch.equal(hidden_too, want_hidden)
    assert torch.equal(normed_after, block_elementwise.modulated_norm(want_hidden, text_length, weight, bias, 1e-5,
                                                                      t_shift, t_scale, shift, scale))
    assert torch.equal(x, x_before)


def test_qk_norm_normalises_each_head_of_q_and_k_and_passes_v():
    batch, tokens, heads, head_dim = 2, 5, 3, 4
    width = heads * head_dim
    qkv = torch.randn(batch, tokens, 3 * width, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(4, head_dim, generator=torch.Generator().manual_seed(2))
    q, k, v = block_elementwise.qk_norm(qkv, heads, *weights, 1e-6)
    for head in range(heads):  # columns [part·width + head·head_dim, + head_dim) of the fused projection
        columns = lambda part: qkv[..., part * width + head * head_dim:][..., :head_dim]  # noqa: E731
        assert torch.equal(q[:, head], F.layer_norm(columns(0), (head_dim,), weights[0], weights[1], 1e-6))
        assert torch.equal(k[:, head], F.layer_norm(columns(1), (head_dim,), weights[2], weights[3], 1e-6))
        assert torch.equal(v[:, head], columns(2))


@pytest.fixture(scope="module")
def compiled_and_eager():
    """The small DiT's batch-4 outputs, eager and with compiled element-wise steps, plain and with KV-sharing on
    every layer, and the number of graphs compiled for them."""
    reason = inductor_unavailable()
    if reason:
        pytest.skip(reason)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = small_dit()
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(4, 3, 16, 4, 6, generator=gen)
    context = torch.randn(4, 7, 24, generator=gen)
    timesteps = torch.tensor([959.0, 500.0, 959.0, 10.0])
    every_layer = ControlSchedule(frozenset({0}), frozenset(range(model.num_layers)))
    outputs = {}
    with torch.no_grad():
        for name, controller in (("plain", AttentionController()), ("kv_sharing", KVSharing(every_layer))):
            model.set_controller(controller)
            for compiled in (False, True):
                model.compile_elementwise(compiled)
                outputs[name, compiled] = model(latents, timesteps, context, step=0, pair=0)
    model.compile_elementwise(False)
    return outputs, torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("controller", ["plain", "kv_sharing"])
def test_compiled_dit_equals_eager(compiled_and_eager, controller):
    outputs, _ = compiled_and_eager
    eager, compiled = outputs[controller, False], outputs[controller, True]
    scale = eager.abs().max()
    assert scale > 0.1  # the comparison is not between near-zero outputs
    assert (compiled - eager).abs().max() <= COMPILED_RELATIVE_TOLERANCE * scale


def test_one_compiled_graph_per_step_serves_every_layer_and_controller(compiled_and_eager):
    _, graphs = compiled_and_eager
    assert graphs == len(block_elementwise.EAGER)  # 4 steps, not 4 per layer or per controller
