"""Attention reweighting of prompt tokens (the original's `ReWeightAdaLNMixin`, docs/method.md, "Reweight").

The original materialises the (heads, N, N) probability map per target branch. Only the entries
between the chosen text tokens and the video change, so here the ordinary fused attention runs
once and each affected output row is corrected from those few entries alone: the column block
P[video, tokens] and the row block P[tokens, video], both recovered exactly from the kernel's
log-sum-exp by `probabilities`. No N×N tensor is built.
"""
import math
from numbers import Integral, Real

import torch

from ..pair_batch import PairBatch
from .control import AttentionController, ControlSchedule, token_indices
from .kernels import attention, attention_with_lse, probabilities
from .kv_sharing import source_rows


def _scaled_rows(out, probs, values, factor: float, renormalise: bool) -> torch.Tensor:
    """Output rows `out` (b, heads, n, d) once their probabilities `probs` (b, heads, n, m) over the
    keys holding `values` (b, heads, m, d) are multiplied by `factor`, optionally renormalised. fp32."""
    scaled = out.float() + (factor - 1) * (probs @ values.float())
    if not renormalise:
        return scaled
    return scaled / (1 + (factor - 1) * probs.sum(-1, keepdim=True))


class TokenReweighting(AttentionController):
    """Scales the attention between chosen text tokens and the video in the target rows.

    At a controlled (step, layer) the source rows get ordinary attention. In each target row, with
    P = softmax(q kᵀ/√d) over all (text and video) keys, the column P[video query, j] and the row
    P[j, video key] of every token j in `tokens` are multiplied by `scale`, with no renormalisation
    (the original's active "version 2"), and O = P·V. Entries between text tokens, P[j, j]
    included, are untouched. The target uses its own keys/values from step `kv_switch_step` on and
    its source's before it (KV-sharing, which hands the target the source's layout).

    `scale` 1 is neutral, 0 removes the token's attention, above 1 strengthens it. A negative
    scale makes those entries negative: the token's value is subtracted from the video outputs (and
    the video's from the token's), pushing them away from the concept rather than only dropping it.

    `additive=True` is the original's commented-out "version 1": `scale` is added to the logits of
    the same entries before the softmax, i.e. they are multiplied by e^scale and every affected row
    renormalised; there a negative scale (the YAML default −5) suppresses the token.
    """

    def __init__(self, schedule: ControlSchedule, tokens, scale: float, kv_switch_step: int = 2,
                 additive: bool = False):
        super().__init__(schedule)
        if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale):
            raise ValueError(f"reweight_scale must be a finite real number, got {scale!r}")
        if isinstance(kv_switch_step, bool) or not isinstance(kv_switch_step, Integral) or kv_switch_step < 0:
            raise ValueError(f"reweight_kv_switch_step must be an int >= 0, got {kv_switch_step!r}")
        self.tokens = token_indices("reweight_token_idx", tokens)
        self.scale = float(scale)
        self.kv_switch_step = int(kv_switch_step)
        self.additive = additive

    @classmethod
    def from_args(cls, args, output_dir: str, prompt_pieces=()) -> "TokenReweighting":
        return cls(ControlSchedule.from_args(args), args.reweight_token_idx, args.reweight_scale,
                   args.reweight_kv_switch_step, args.reweight_additive)

    def __call__(self, q, k, v, layer: int, text_length: int) -> torch.Tensor:
        if not self.active(layer):
            return attention(q, k, v)
        if self.tokens[-1] >= text_length:
            raise ValueError(f"reweight_token_idx {list(self.tokens)} must index the {text_length} text tokens")
        if self.step < self.kv_switch_step:
            k, v = source_rows(k), source_rows(v)
        qs, ks, vs = (PairBatch.split(t) for t in (q, k, v))  # checks the batch first
        out, lse = attention_with_lse(q, k, v)  # ordinary for the sources, to be reweighted for the targets
        outs, lses = PairBatch.split(out), PairBatch.split(lse)
        return outs._replace(
            u_target=self.reweighted(outs.u_target, qs.u_target, ks.u_target, vs.u_target, lses.u_target, text_length),
            c_target=self.reweighted(outs.c_target, qs.c_target, ks.c_target, vs.c_target, lses.c_target, text_length),
        ).join()

    def reweighted(self, out, q, k, v, lse, text_length: int) -> torch.Tensor:
        """Attention output `out` (b, heads, N, d) of q, k, v (log-normaliser `lse`) with the token
        entries scaled: only the video rows and the token rows change."""
        video, tokens = slice(text_length, None), list(self.tokens)
        factor = math.exp(self.scale) if self.additive else self.scale
        result = out.to(torch.float32, copy=True)
        video_to_tokens = probabilities(q, k, lse, video, tokens)  # (b, heads, N_video, n_tokens)
        result[:, :, video] = _scaled_rows(out[:, :, video], video_to_tokens, v[:, :, tokens], factor, self.additive)
        tokens_to_video = probabilities(q, k, lse, tokens, video)  # (b, heads, n_tokens, N_video)
        result[:, :, tokens] = _scaled_rows(out[:, :, tokens], tokens_to_video, v[:, :, video], factor, self.additive)
        return result.to(out.dtype)
