"""Attention controllers: the runtime seam DiTCtrl swaps into every full-attention layer.

The DiT applies the per-head QK LayerNorm and hands the controller q, k, v of shape
(B, heads, N, head_dim) with the text tokens first. The controller returns the attention output
of the same shape. Before each DiT forward the model calls `begin_forward(step, pair, token_grid)`
with the sampler iteration and window pair it was given, so step and layer are explicit
arguments rather than counters that could drift; after each sampler step the generation loop calls
`end_step()`, where controllers write the files the step collected (never inside attention). Video tokens follow the text tokens in
(frame, row, column) order over `token_grid` = (frames, rows, columns).
"""
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import torch

from ..controllers import scheduled
from .kernels import attention


@dataclass(frozen=True)
class ControlSchedule:
    """Which (denoising step, layer) pairs an attention controller acts on."""
    steps: frozenset
    layers: frozenset

    @classmethod
    def from_args(cls, args) -> "ControlSchedule":
        """Explicit `step_idx` / `layer_idx` lists win over the half-open start/end ranges."""
        return cls(*scheduled(args))

    def active(self, step, layer: int) -> bool:
        return step is not None and step in self.steps and layer in self.layers


class AttentionController:
    """Plain joint text-video attention (the original's `BaseAdaLNMixin`)."""

    def __init__(self, schedule: ControlSchedule | None = None):
        self.schedule = schedule or ControlSchedule(frozenset(), frozenset())
        self.step = self.pair = self.token_grid = None

    @classmethod
    def from_args(cls, args, output_dir: str, prompt_pieces=()) -> "AttentionController":
        """Build from the run's resolved `args`; controllers that save files do so under `output_dir`, those that
        label figures with words take them from `prompt_pieces` (each prompt's T5 pieces by token index)."""
        return cls(ControlSchedule.from_args(args))

    def begin_forward(self, step=None, pair=None, token_grid=None) -> None:
        self.step, self.pair, self.token_grid = step, pair, token_grid

    def end_step(self) -> None:
        """Called once after each sampler step: write what the step collected (nothing for plain attention)."""

    def collect_on_main(self, ranks) -> None:
        """With several ranks, called before `end_step`: hand what this rank's step collected to rank 0
        (`distributed.Ranks.gathered_on_main`), the one rank that writes files."""

    def active(self, layer: int) -> bool:
        return self.schedule.active(self.step, layer)

    def __call__(self, q, k, v, layer: int, text_length: int) -> torch.Tensor:
        return attention(q, k, v)


def token_indices(name: str, value) -> tuple:
    """A token set from args `name`: an int or a non-empty list of ints >= 0, as a sorted tuple without repeats."""
    tokens = [value] if isinstance(value, Integral) else value
    if isinstance(tokens, Sequence) and not isinstance(tokens, str) and tokens and \
            all(isinstance(t, Integral) and not isinstance(t, bool) and t >= 0 for t in tokens):
        return tuple(sorted({int(t) for t in tokens}))
    raise ValueError(f"args.{name} must be an int >= 0 or a non-empty list of them, got {value!r}")
