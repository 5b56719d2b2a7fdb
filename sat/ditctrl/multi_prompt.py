"""DiTCtrl's multi-prompt denoising step: adjacent windows denoised as source/target pairs, then blended."""
import torch

from .distributed import Ranks
from .latent_blending import LatentBlender
from .segment_layout import SegmentLayout


def window_conditions(layout: SegmentLayout, prompt_embeds: torch.Tensor) -> torch.Tensor:
    """(S, L, D) text embedding per window, interpolated in the embeddings' dtype like the original.

    prompt_embeds: (P, L, D), one row per prompt.
    """
    return torch.stack([
        prompt_embeds[c.first] if c.is_base else c.w_first * prompt_embeds[c.first] + (1 - c.w_first) * prompt_embeds[c.second]
        for c in layout.conditions])


class MultiPromptDenoiser:
    """`denoise(x, step, alpha, timestep)` for the long latent x (1, L, C, H, W).

    Every adjacent pair (k, k+1) is denoised with window k as source and k+1 as target (batch rows
    (u_k, u_k+1, c_k, c_k+1), controller told step and pair k); the guided x0 of both windows is
    accumulated with triangular weights, so inner windows count twice (as target of the pair on
    their left and as source of the pair on their right). A layout with a single window is
    denoised alone.

    With `share_work` the work both roles of a window have in common is done once (docs/method.md,
    "Work sharing across windows"), in DiT batches of at most `max_batch_windows` windows (2 rows each):
    - steps where the controller does not act: each window is denoised once and its prediction
      added once per role;
    - steps where a controller marked `per_window_below_first_layer` (KV-sharing) acts from layer
      l0 on: layers [0, l0) run once per window, layers [l0, end) per pair from those states.
    Other controllers' active steps take the pair path. The blend adds the same predictions in
    the same order as the pair path; only the DiT batch composition (hence rounding) differs.

    With `ranks` of several processes each computes its dealt units (pairs, window groups or pair
    tails) with the same DiT batches as one process, the x0 predictions are all-gathered and every
    rank blends all of them in the same order: the result is bitwise that of one process.
    """

    def __init__(self, guided, layout: SegmentLayout, cond: torch.Tensor, uncond: torch.Tensor,
                 share_work: bool = True, max_batch_windows: int = 2, ranks: Ranks = Ranks()):
        """cond/uncond: (S, L, D) per-window text embeddings; `ranks`: the processes sharing the work."""
        if isinstance(max_batch_windows, bool) or not isinstance(max_batch_windows, int) or max_batch_windows < 1:
            raise ValueError(f"max_batch_windows must be an int >= 1, got {max_batch_windows!r}")
        self.guided, self.layout, self.cond, self.uncond = guided, layout, cond, uncond
        self.share_work, self.max_batch_windows, self.ranks = share_work, max_batch_windows, ranks

    def __call__(self, x, step, alpha, timestep) -> torch.Tensor:
        layout = self.layout
        blender = LatentBlender(x, layout.tile)
        controller, num_layers = self.guided.model.controller, self.guided.model.num_layers
        if layout.num_windows == 1:  # nothing to share with: a plain single-window step (step=None)
            self._add(blender, [0], self.guided(self._windows(x, [0]), None, alpha, timestep, self.cond[:1],
                                                self.uncond[:1]))
        elif self.share_work and not controller_acts(controller, step, num_layers):
            self._each_window_once(blender, x, step, alpha, timestep)
        elif self.share_work and getattr(controller, "per_window_below_first_layer", False):
            self._pairs_after_window_layers(blender, x, step, alpha, timestep, min(controller.schedule.layers))
        else:
            self._pairs(blender, x, step, alpha, timestep)
        return blender.result()

    def _pairs(self, blender, x, step, alpha, timestep) -> None:
        """One whole DiT forward per adjacent pair; the pairs are the units dealt to ranks."""
        def pair_x0(pairs):
            for k in pairs:
                yield self.guided(self._windows(x, [k, k + 1]), step, alpha, timestep, self.cond[k:k + 2],
                                  self.uncond[k:k + 2], pair=k)

        for k, x0 in enumerate(self._all_units([2] * (self.layout.num_windows - 1), x, pair_x0)):
            self._add(blender, [k, k + 1], x0)

    def _each_window_once(self, blender, x, step, alpha, timestep) -> None:
        """Each window's plain prediction once, added as many times as the window has roles; the window groups
        are the units dealt to ranks."""
        last, groups = self.layout.num_windows - 1, self._groups()

        def group_x0(units):
            for g in units:
                yield self.guided(self._windows(x, groups[g]), step, alpha, timestep, self.cond[groups[g]],
                                  self.uncond[groups[g]])

        for group, x0 in zip(groups, self._all_units([len(g) for g in groups], x, group_x0)):
            for w, prediction in zip(group, x0):
                roles = int(w > 0) + int(w < last)
                self._add(blender, [w] * roles, [prediction] * roles)

    def _pairs_after_window_layers(self, blender, x, step, alpha, timestep, first_layer: int) -> None:
        """Layers [0, first_layer) once per window, the rest per pair. The pair tails are the units dealt to
        ranks; a rank runs the first layers of the window groups its pairs need (a group on the border of two
        ranks' blocks runs on both, so every window's states come from the same group batch as in one
        process). Window states are computed a group at a time when a pair first needs them and dropped after
        their last pair, so at most max_batch_windows + 1 windows' states are held."""
        def pair_tail_x0(pairs):
            states, groups = {}, iter([g for g in self._groups() if g[-1] >= pairs.start])
            for k in pairs:
                while k + 1 not in states:
                    group = next(groups)
                    group_states = self.guided.begin(self._windows(x, group), step, timestep, self.cond[group],
                                                     self.uncond[group], first_layer)
                    states.update((w, s) for w, s in zip(group, group_states) if w >= k)
                yield self.guided.finish(self._windows(x, [k, k + 1]), [states.pop(k), states[k + 1]], step, alpha,
                                         timestep, first_layer, pair=k)

        for k, x0 in enumerate(self._all_units([2] * (self.layout.num_windows - 1), x, pair_tail_x0)):
            self._add(blender, [k, k + 1], x0)

    def _all_units(self, rows, x, compute_mine) -> list[torch.Tensor]:
        """Every unit's x0 (rows[u], tile, C, H, W) in unit order; this rank computes its own (`Ranks.all_units`)."""
        return self.ranks.all_units(rows, x[0, self.layout.window(0)], compute_mine)

    def _groups(self) -> list[list[int]]:
        return window_groups(self.layout.num_windows, self.max_batch_windows)

    def _windows(self, x, windows) -> torch.Tensor:
        """(len(windows), tile, C, H, W): the listed windows of the long latent x (1, L, C, H, W)."""
        return torch.cat([x[:, self.layout.window(w)] for w in windows])

    def _add(self, blender, windows, predictions) -> None:
        """Blend predictions[j] (tile, C, H, W) into window windows[j], in order."""
        for w, prediction in zip(windows, predictions):
            blender.add(self.layout.window(w), prediction[None])


def window_groups(num_windows: int, max_batch_windows: int) -> list[list[int]]:
    """Consecutive windows in DiT batches of at most max_batch_windows."""
    return [list(range(start, min(start + max_batch_windows, num_windows)))
            for start in range(0, num_windows, max_batch_windows)]


def controller_acts(controller, step, num_layers: int) -> bool:
    """Whether `controller` departs from plain attention anywhere in this step (every controller is plain
    outside its schedule's steps and layers)."""
    schedule = controller.schedule
    return step in schedule.steps and any(layer < num_layers for layer in schedule.layers)


def long_noise(layout: SegmentLayout, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(1, L, C, H, W) fp32 standard normal drawn on the CPU from `seed`.

    Windows are slices of this one tensor, so overlapping windows share their initial noise (the
    original's explicit "overlap copy" is an identity and is not repeated here).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, layout.length, channels, height, width, generator=generator)
