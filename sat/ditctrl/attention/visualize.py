"""Attention-map visualisation (the original's `VisualizeAdaLNMixin`, docs/method.md, "Attention visualisation").

The original writes, at layer ℓ, the running mean over layers 0…ℓ of the current forward (ℓ
included) of head-averaged softmax maps. Here, only at the requested sampler iterations and only for
layers 0…max(requested layers), the controller sums exactly the blocks its figures show, each from
the kernel's log-sum-exp (normalised over all keys, fp32); no N×N map is ever built. The attention
output is always the plain one.

Blocks, over the visualisation batch [uncond; cond]:
  tokens   video→text, the selected frame's queries × the requested tokens   cond row
  text     text→text, L_text × L_text                                       cond row
  spatial  video→video within frame frames//2                               uncond row
  temporal frame→frame at the centre patch, frames × frames                 uncond row
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..attention_figures import TokenMaps, heatmap_figure, overview_figure, token_panels_figure
from ..config import MAPS_FOLDER
from ..console import say
from ..output_files import write_file
from ..pair_batch import split_guidance
from .control import AttentionController, ControlSchedule
from .kernels import attention, attention_with_lse, probabilities
from .normalise import min_max

TOKEN_MAP_FRAME = 10  # latent frame of the token maps (the original's hard-coded 10), clamped to the last frame
@dataclass(frozen=True)
class MapLayout:
    """Where the drawn blocks sit in the joint sequence: text first, then video in (frame, row, col) order."""
    text_length: int
    token_grid: tuple  # (frames, rows, cols)

    @property
    def frame_tokens(self) -> int:
        return self.token_grid[1] * self.token_grid[2]

    @property
    def token_frame(self) -> int:
        return min(TOKEN_MAP_FRAME, self.token_grid[0] - 1)

    @property
    def spatial_frame(self) -> int:
        return self.token_grid[0] // 2

    @property
    def centre(self) -> tuple:
        return self.token_grid[1] // 2, self.token_grid[2] // 2

    def frame_queries(self, frame: int, device) -> torch.Tensor:
        """Sequence indices of one latent frame's video tokens, (rows·cols,)."""
        start = self.text_length + frame * self.frame_tokens
        return torch.arange(start, start + self.frame_tokens, device=device)

    def centre_queries(self, device) -> torch.Tensor:
        """Sequence indices of the centre patch in every frame, (frames,)."""
        row, col = self.centre
        frames = torch.arange(self.token_grid[0], device=device)
        return self.text_length + frames * self.frame_tokens + row * self.token_grid[2] + col


def head_mean_maps(q, k, v, blocks: list) -> list:
    """Head-averaged softmax maps of the one-row q, k, v (1, heads, N, d) for each (queries, keys) block, fp32
    (nq, nk) each. One fused attention over the union of the blocks' queries yields their log-sum-exp over all keys.
    """
    queries = torch.cat([block_queries for block_queries, _ in blocks])
    q_row, k_row = q[:, :, queries], k
    _, lse = attention_with_lse(q_row, k_row, v)
    maps, start = [], 0
    for block_queries, keys in blocks:
        rows = slice(start, start + len(block_queries))
        maps.append(probabilities(q_row, k_row, lse, rows, keys).mean(dim=1)[0])
        start += len(block_queries)
    return maps


class AttentionVisualizer(AttentionController):
    """Plain attention that writes running-mean attention maps at the requested (step, layer) pairs."""

    def __init__(self, steps, layers, tokens, output_dir: str, dpi: float | None = None, pieces=()):
        """`pieces`: the prompt's T5 pieces by token index, to label the token maps with their words."""
        for name, values in (("attn_map_step_idx", steps), ("attn_map_layer_idx", layers),
                             ("attn_map_token_idx", tokens)):
            if not values:
                raise ValueError(f"args.{name} is empty: attention visualisation needs at least one entry")
        super().__init__(ControlSchedule(frozenset(steps), frozenset(layers)))
        self.last_layer = max(layers)
        self.tokens = tuple(tokens)
        self.labels = tuple(f'token {token} "{pieces[token]}"' if pieces else f"token {token}" for token in self.tokens)
        self.output_dir = output_dir
        self.dpi = dpi  # None: the original's dpi per figure
        self.figures_written: list[str] = []  # every PNG and .npy, in order
        self.records: list[TokenMaps] = []  # token maps per written (step, layer), for `write_overview`
        self._layout: MapLayout | None = None
        self._sums: dict | None = None  # block name -> fp32 sum over the layers recorded so far
        self._count = 0
        self._pending: list[tuple[int, int, MapLayout, dict]] = []  # (step, layer, layout, means on the device)

    @classmethod
    def from_args(cls, args, output_dir: str, prompt_pieces=()) -> "AttentionVisualizer":
        return cls(args.attn_map_step_idx, args.attn_map_layer_idx, args.attn_map_token_idx, output_dir,
                   pieces=prompt_pieces[0] if prompt_pieces else ())

    def begin_forward(self, step=None, pair=None, token_grid=None) -> None:
        super().begin_forward(step, pair, token_grid)
        self._layout, self._sums, self._count = None, None, 0

    def recording(self, layer: int) -> bool:
        return self.step in self.schedule.steps and layer <= self.last_layer

    def __call__(self, q, k, v, layer: int, text_length: int) -> torch.Tensor:
        out = attention(q, k, v)
        if self.recording(layer):
            self._accumulate(q, k, v, text_length)
            if self.active(layer):
                self._pending.append((self.step, layer, self._layout,
                                      {name: total / self._count for name, total in self._sums.items()}))
        return out

    def end_step(self) -> None:
        """Write the maps the step's forwards collected on the device."""
        for step, layer, layout, means in self._pending:
            self._write(step, layer, layout, means)
        self._pending = []

    def _start(self, batch: int, text_length: int) -> None:
        """Check the first recorded layer of a forward and fix the layout of its blocks."""
        if batch != 2:
            raise ValueError(f"attention visualisation needs a batch of 2 rows [uncond; cond], got {batch}")
        if self.token_grid is None:
            raise ValueError("attention visualisation needs the token grid: call begin_forward with token_grid")
        if max(self.tokens) >= text_length:
            raise ValueError(f"args.attn_map_token_idx contains {max(self.tokens)}; "
                             f"allowed: 0..{text_length - 1} (the text length)")
        self._layout = MapLayout(text_length, tuple(self.token_grid))

    def _accumulate(self, q, k, v, text_length: int) -> None:
        if self._layout is None:
            self._start(q.shape[0], text_length)
        layout, device = self._layout, q.device
        text = torch.arange(layout.text_length, device=device)
        token_frame = layout.frame_queries(layout.token_frame, device)
        tokens = torch.tensor(self.tokens, device=device)
        spatial = layout.frame_queries(layout.spatial_frame, device)
        centre = layout.centre_queries(device)
        (u_q, c_q), (u_k, c_k), (u_v, c_v) = (split_guidance(t) for t in (q, k, v))
        maps = dict(zip(("text", "tokens"), head_mean_maps(c_q, c_k, c_v, [(text, text), (token_frame, tokens)])))
        maps.update(zip(("spatial", "temporal"), head_mean_maps(u_q, u_k, u_v, [(spatial, spatial), (centre, centre)])))
        if self._sums is None:
            self._sums = maps
        else:
            for name, block in maps.items():
                self._sums[name] += block
        self._count += 1

    def _write(self, step: int, layer: int, layout: MapLayout, means: dict) -> None:
        """Save the running means of layers 0…`layer` as figures and arrays under attn_map/step{s}_layer{l}/."""
        mean = {name: block.cpu() for name, block in means.items()}
        _, rows, cols = layout.token_grid
        token_maps = min_max(mean["tokens"].T.reshape(len(self.tokens), rows, cols), dims=(1, 2)).numpy()
        frame, (row, col) = layout.spatial_frame, layout.centre
        folder = os.path.join(self.output_dir, MAPS_FOLDER, f"step{step}_layer{layer}")
        os.makedirs(folder, exist_ok=True)
        token_png = os.path.join(folder, f"token_attention_vertical_step_{step}_layer_{layer}_selected_frame_"
                                         f"{layout.token_frame}_first_{len(self.tokens)}_tokens.png")
        token_panels_figure(token_maps, self.labels, token_png, dpi=self.dpi)
        self.figures_written.append(token_png)
        where = f"Step {step}, Layer {layer}"
        self._save_heatmap(mean["text"], os.path.join(folder, "text_attn_map"),
                           f"Text-to-Text Attention Map ({where})", "Text Token Index", 10, grid=True)
        self._save_heatmap(mean["spatial"], os.path.join(folder, f"spatial_attn_map_frame{frame}"),
                           f"Spatial Attention Map (Frame {frame}, {where})", "Spatial Position", 10)
        self._save_heatmap(mean["temporal"], os.path.join(folder, f"temporal_attn_map_pos_{row}_{col}"),
                           f"Temporal Attention Map at Position ({row}, {col}) ({where})", "Frame Index", 8)
        self.records.append(TokenMaps(step, layer, layout.token_frame, self.labels, token_maps))
        with tqdm.external_write_mode():  # written while the sampler's progress bar runs: above it, not into it
            say(f"saved attention maps of step {step}, layer {layer} (mean of layers 0-{layer}) to {folder}")

    def _save_heatmap(self, block: torch.Tensor, stem: str, title: str, axis_label: str, size_in: float,
                      grid: bool = False) -> None:
        """Min-max normalise over the whole block; write `stem`.npy and `stem`.png."""
        normalised = min_max(block).numpy()
        write_file(stem + ".npy", lambda temporary: np.save(temporary, normalised))
        heatmap_figure(normalised, stem + ".png", title, axis_label, size_in, grid=grid, dpi=self.dpi)
        self.figures_written += [stem + ".npy", stem + ".png"]

    def write_overview(self, frames_rgb=None) -> str:
        """attn_map/overview.png: every written (step, layer)'s token maps, over the decoded video when given."""
        path = overview_figure(self.records, frames_rgb, os.path.join(self.output_dir, MAPS_FOLDER, "overview.png"),
                               dpi=self.dpi)
        self.figures_written.append(path)
        return path
