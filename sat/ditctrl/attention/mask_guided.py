"""Mask-guided KV-sharing (the original's `KVSharingMaskGuidedAdaLNMixin`, docs/method.md), without N×N maps.

In a controlled step, layers 0…ℓ_max (ℓ_max = the last controlled layer) record, for the conditional
rows only, the head-averaged video→text attention summed over a token set: c_source over
`ref_token_idx`, c_target over `cur_token_idx`, each row with its OWN keys and its own softmax
normaliser over all N keys. Only the selected text columns are ever formed, from the log-sum-exp
that the fused attention kernel returns (`probabilities`). At a controlled layer ℓ the running
mean over layers 0…ℓ, min-max normalised per frame and thresholded, splits the video tokens into
foreground and background: a target video query in the target foreground attends to the text keys
and the source-foreground video keys of its source row, a background query to the text keys and
the source-background video keys. The masks come from the conditional rows and serve both the
conditional and the unconditional target.

Cost per forward (N tokens, T text, V video; m_fg/m_bg target fg/bg video queries, n_fg/n_bg source
fg/bg video keys):
- steps outside the schedule, and layers after ℓ_max: exactly the plain attention call;
- layers ≤ ℓ_max that share nothing: one `attention_with_lse` on the whole batch (the same FLOPs as
  the plain call) plus two probability blocks of heads × V × |tokens| dot products;
- controlled layers: 5 attention calls instead of KV-sharing's one: sources (2 rows, N×N), the
  c_target own-key normaliser (1 row, N×N, output discarded: the only extra N×N work, +25 %),
  target text queries (2 rows, T×N), foreground (2 rows, m_fg×(T+n_fg)) and background (2 rows,
  m_bg×(T+n_bg)); an empty query group skips its call. The target work is at most N×N per row, so a
  controlled layer costs at most 1.25× a KV-sharing layer. Plus the probability blocks, an O(V)
  normalisation and, when saving, two small masks kept on the device until the step ends
(`end_step` writes them as PNGs).
The largest tensors are the gathered copies of q/k/v, never a map over N×N or V×V entries.
"""
import os

import torch

from ..config import check_index_range, mask_folder
from ..pair_batch import PairBatch
from .control import AttentionController, ControlSchedule, token_indices
from .kernels import attention, attention_with_lse, probabilities
from .mask_images import save_mask_frames
from .normalise import normalise_per_frame


class TokenAttentionMap:
    """Running sum over layers of one row's head-averaged attention from every video query to a set of text tokens."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens
        self.reset()

    def reset(self) -> None:
        self.total, self.layers = None, 0

    def add(self, q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, text_length: int) -> None:
        """Add one layer: q, k (1, heads, N, d) of the row with its own keys, lse (1, heads, N) their normaliser."""
        selected = probabilities(q, k, lse, slice(text_length, None), self.tokens)  # (1, heads, V, |tokens|) fp32
        layer_map = selected.sum(-1).mean(1)[0]  # (V,)
        self.total = layer_map if self.total is None else self.total + layer_map
        self.layers += 1

    def mean(self) -> torch.Tensor:
        """(V,) fp32 mean over the layers added since the last reset."""
        return self.total / self.layers


def masked_target_attention(q, k, v, text_length: int, source_fg: torch.Tensor, target_fg: torch.Tensor):
    """Target queries q against their sources' k, v (all (B, heads, N, d)) under the fg/bg key split.

    source_fg, target_fg: (V,) bool over the video tokens. Text queries see every key. A video query with
    target_fg sees the text keys and the video keys with source_fg; any other video query the text keys and the
    video keys without. Each group is one call on gathered queries and keys: no mask tensor is built.
    """
    out = torch.empty_like(q)
    out[:, :, :text_length] = attention(q[:, :, :text_length], k, v)
    text_keys = torch.arange(text_length, device=q.device)
    for query_group, key_group in ((target_fg, source_fg), (~target_fg, ~source_fg)):
        queries = text_length + query_group.nonzero().squeeze(1)
        if queries.numel():
            keys = torch.cat([text_keys, text_length + key_group.nonzero().squeeze(1)])
            group_out = attention(q.index_select(2, queries), k.index_select(2, keys), v.index_select(2, keys))
            out.index_copy_(2, queries, group_out)
    return out


class MaskGuidedKVSharing(AttentionController):
    """KV-sharing whose target video queries see only the matching (foreground/background) source video keys."""

    def __init__(self, schedule: ControlSchedule, thres: float, ref_tokens, cur_tokens, mask_dir: str | None = None):
        super().__init__(schedule)
        if not 0 <= thres <= 1:
            raise ValueError(f"args.thres must lie in [0, 1], got {thres}")
        self.thres, self.mask_dir = thres, mask_dir
        self.source_map = TokenAttentionMap(token_indices("ref_token_idx", ref_tokens))
        self.target_map = TokenAttentionMap(token_indices("cur_token_idx", cur_tokens))
        self.last_recorded_layer = max(schedule.layers, default=-1)
        self.pending_masks: list[tuple[str, torch.Tensor]] = []  # (PNG path, mask on the device) until end_step

    @classmethod
    def from_args(cls, args, output_dir: str | None, prompt_pieces=()) -> "MaskGuidedKVSharing":
        """Masks are saved under `config.mask_folder` with `save_masks` (the original's default); `output_dir=None`
        saves nothing."""
        mask_dir = mask_folder(args, output_dir) if output_dir is not None and args.save_masks else None
        return cls(ControlSchedule.from_args(args), args.thres, args.ref_token_idx, args.cur_token_idx, mask_dir)

    def begin_forward(self, step=None, pair=None, token_grid=None) -> None:
        super().begin_forward(step, pair, token_grid)
        self.source_map.reset()
        self.target_map.reset()

    def end_step(self) -> None:
        """Write the masks of the step's controlled layers (held on the device during the step) as PNGs."""
        for path, mask in self.pending_masks:
            save_mask_frames(mask, path)
        self.pending_masks = []

    def collect_on_main(self, ranks) -> None:
        """Every rank's masks of this step (its own pairs', in pair order) go to rank 0, which writes them all:
        the same PNG files as one process, staged with the run's other outputs."""
        self.pending_masks = ranks.gathered_on_main([(path, mask.cpu()) for path, mask in self.pending_masks])

    def records(self, layer: int) -> bool:
        """Whether this layer's maps are needed: a controlled step, at or before the last controlled layer."""
        return self.step in self.schedule.steps and layer <= self.last_recorded_layer

    def __call__(self, q, k, v, layer: int, text_length: int) -> torch.Tensor:
        if not self.records(layer):
            return attention(q, k, v)
        self._check(q, text_length)
        qs, ks, vs = (PairBatch.split(t) for t in (q, k, v))
        if not self.active(layer):
            out, lse = attention_with_lse(q, k, v)
            lses = PairBatch.split(lse)
            self._record(qs, ks, lses.c_source[0], lses.c_target[0], text_length)
            return out
        sources, source_lse = attention_with_lse(qs.sources(), ks.sources(), vs.sources())  # ordinary attention
        _, c_target_lse = attention_with_lse(qs.c_target, ks.c_target, vs.c_target)  # own keys: only the normaliser
        self._record(qs, ks, source_lse[1], c_target_lse[0], text_length)
        source_fg, target_fg = (mask.flatten() >= self.thres for mask in self._masks(layer))
        targets = masked_target_attention(qs.targets(), ks.sources(), vs.sources(), text_length, source_fg, target_fg)
        return PairBatch.from_roles(sources, targets).join()

    def _check(self, q: torch.Tensor, text_length: int) -> None:
        if q.shape[0] != 4:
            raise ValueError(f"mask-guided KV-sharing needs a batch of exactly 4 rows (u_s, u_t, c_s, c_t), "
                             f"got {q.shape[0]}")
        check_index_range("ref_token_idx", self.source_map.tokens, text_length)
        check_index_range("cur_token_idx", self.target_map.tokens, text_length)
        frames, rows, cols = self.token_grid
        if frames * rows * cols != q.shape[2] - text_length:
            raise ValueError(f"token_grid {self.token_grid} does not match the {q.shape[2] - text_length} video tokens")

    def _record(self, qs: PairBatch, ks: PairBatch, c_source_lse, c_target_lse, text_length: int) -> None:
        """Add this layer's c_source and c_target maps; each lse (heads, N) is over that row's own keys."""
        self.source_map.add(qs.c_source, ks.c_source, c_source_lse[None], text_length)
        self.target_map.add(qs.c_target, ks.c_target, c_target_lse[None], text_length)

    def _masks(self, layer: int):
        """The continuous (frames, rows, cols) source and target masks of this layer, queued for saving when a
        folder is set."""
        masks = [normalise_per_frame(m.mean().view(self.token_grid)) for m in (self.source_map, self.target_map)]
        if self.mask_dir is not None:
            folder = os.path.join(self.mask_dir, f"segment{self.pair or 0}")
            self.pending_masks += [(os.path.join(folder, f"mask_{kind}_step{self.step}_layer{layer}_all_frames.png"),
                                    mask) for kind, mask in zip("st", masks)]
        return masks
