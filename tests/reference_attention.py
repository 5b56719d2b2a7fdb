"""Explicit N×N attention references for the controllers, written row by row without the library's helpers."""
import torch

from ditctrl.attention import AttentionController

TARGET_ROWS = {1: 0, 3: 2}  # u_target -> u_source, c_target -> c_source in a 4-row pair batch


def explicit_attention(q, k, v, probability_map=None):
    """softmax(q kᵀ/√d) v in fp32 for (..., N, d) inputs; `probability_map(p)` may edit the map first."""
    p = torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    if probability_map is not None:
        p = probability_map(p)
    return (p @ v.float()).to(q.dtype)


class ExplicitKVSharing(AttentionController):
    """In controlled layers each target row attends with its queries to its source row's keys and values."""

    def __call__(self, q, k, v, layer, text_length):
        if not self.active(layer):
            return explicit_attention(q, k, v)
        rows = [TARGET_ROWS.get(row, row) for row in range(q.shape[0])]
        return explicit_attention(q, k[rows], v[rows])


class ExplicitReweighting(AttentionController):
    """The original's reweighting: target maps with the (video, token) and (token, video) entries scaled,
    source K/V for the targets before `kv_switch_step`."""

    def __init__(self, schedule, tokens, scale, kv_switch_step=2):
        super().__init__(schedule)
        self.tokens, self.scale, self.kv_switch_step = list(tokens), scale, kv_switch_step

    def __call__(self, q, k, v, layer, text_length):
        if not self.active(layer):
            return explicit_attention(q, k, v)
        rows = [TARGET_ROWS.get(row, row) if self.step < self.kv_switch_step else row for row in range(q.shape[0])]
        factor = torch.ones(q.shape[2], q.shape[2])
        factor[text_length:, self.tokens] = self.scale
        factor[self.tokens, text_length:] = self.scale
        out = explicit_attention(q, k[rows], v[rows])
        for target in TARGET_ROWS:
            out[target] = explicit_attention(q[target], k[rows[target]], v[rows[target]], lambda p: p * factor)
        return out


class ExplicitReferenceAttention(AttentionController):
    """In controlled layers each target row attends over its own keys and values followed by its source row's."""

    def __call__(self, q, k, v, layer, text_length):
        out = explicit_attention(q, k, v)
        if self.active(layer):
            for target, source in TARGET_ROWS.items():
                out[target] = explicit_attention(q[target], torch.cat([k[target], k[source]], dim=-2),
                                                 torch.cat([v[target], v[source]], dim=-2))
        return out
