"""The element-wise work of a CogVideoX block, as functions of tensors only (no module state), so that one
`torch.compile`d copy of each serves every layer (`args.compile_dit`).

The matrix products (QKV, output projection, MLP) and the attention controller stay outside, in eager mode.
Text tokens come first in every (B, N, d) sequence; `text_length` splits them from the video tokens, whose
adaLN modulation and gates differ. The in-place steps work on tensors the block made itself (never on the
block's input), and give bitwise the results of the plain out-of-place formulas, with no concatenation.
"""
from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, out=None) -> torch.Tensor:
    """x (B, n, d) * (1 + scale) + shift, with (B, d) shift/scale broadcast over tokens."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1), out=out)


def modulated_norm(x, text_length: int, weight, bias, eps: float, text_shift, text_scale, video_shift, video_scale):
    """LayerNorm of every token of x (B, N, d), then adaLN modulation: text tokens by text_*, video tokens by video_*."""
    normed = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
    parts = ((normed[:, :text_length], text_shift, text_scale), (normed[:, text_length:], video_shift, video_scale))
    if torch.compiler.is_compiling():  # dynamo cannot trace `out=` into a strided view; inductor fuses the cat
        return torch.cat([modulate(part, shift, scale) for part, shift, scale in parts], dim=1)
    for part, shift, scale in parts:
        modulate(part, shift, scale, out=part)
    return normed


def gated_residual(x, update, text_length: int, text_gate, video_gate):
    """x + gate * update (B, N, d) with (B, d) gates per segment, written into `update` (a fresh projection output,
    overwritten) and returned; x is left as it is."""
    for part, gate in ((slice(None, text_length), text_gate), (slice(text_length, None), video_gate)):
        update[:, part].mul_(gate.unsqueeze(1)).add_(x[:, part])
    return update


def post_attention(x, attended, text_length: int, text_gate, video_gate, weight, bias, eps: float,
                   text_shift, text_scale, video_shift, video_scale):
    """The attention's gated residual and the MLP's modulated norm: (new hidden states, MLP input), each (B, N, d).
    `attended` is overwritten by the new hidden states."""
    hidden = gated_residual(x, attended, text_length, text_gate, video_gate)
    return hidden, modulated_norm(hidden, text_length, weight, bias, eps, text_shift, text_scale, video_shift,
                                  video_scale)


def qk_norm(qkv, num_heads: int, query_weight, query_bias, key_weight, key_bias, eps: float):
    """The fused projection (B, N, 3·d) -> q, k, v (B, heads, N, head_dim), q and k LayerNormed per head."""
    batch, length, _ = qkv.shape
    q, k, v = qkv.view(batch, length, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    return (F.layer_norm(q, q.shape[-1:], query_weight, query_bias, eps),
            F.layer_norm(k, k.shape[-1:], key_weight, key_bias, eps), v)


class BlockElementwise(NamedTuple):
    """The element-wise steps of one block, in the order the block calls them."""
    pre_attention: object  # modulated_norm
    qk_norm: object
    post_attention: object
    gated_residual: object  # the MLP's residual


EAGER = BlockElementwise(modulated_norm, qk_norm, post_attention, gated_residual)


@cache
def compiled() -> BlockElementwise:
    """The steps compiled once per process (each compiles per input shape on its first call, then is reused by
    every layer and every model)."""
    return BlockElementwise(*(torch.compile(step, dynamic=False, fullgraph=True) for step in EAGER))
