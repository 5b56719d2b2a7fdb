"""DiTCtrl's multi-prompt denoising step: adjacent windows denoised as source/target pairs, then blended."""
import torch

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

    Every adjacent pair (k, k+1) is one DiT call with window k as source and k+1 as target; the
    guided x0 of both windows is accumulated with triangular weights, so inner windows count twice
    (as target of the pair on their left and as source of the pair on their right). A layout with
    a single window is denoised alone.
    """

    def __init__(self, guided, layout: SegmentLayout, cond: torch.Tensor, uncond: torch.Tensor):
        """cond/uncond: (S, L, D) per-window text embeddings."""
        self.guided, self.layout, self.cond, self.uncond = guided, layout, cond, uncond

    def __call__(self, x, step, alpha, timestep) -> torch.Tensor:
        layout = self.layout
        blender = LatentBlender(x, layout.tile)
        if layout.num_windows == 1:
            window = layout.window(0)
            blender.add(window, self.guided(x[:, window], step, alpha, timestep, self.cond[:1], self.uncond[:1]))
        for k in range(layout.num_windows - 1):
            source, target = layout.window(k), layout.window(k + 1)
            x0 = self.guided(torch.cat([x[:, source], x[:, target]]), step, alpha, timestep,
                             self.cond[k:k + 2], self.uncond[k:k + 2], pair=k)
            blender.add(source, x0[:1])
            blender.add(target, x0[1:])
        return blender.result()


def long_noise(layout: SegmentLayout, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(1, L, C, H, W) fp32 standard normal drawn on the CPU from `seed`.

    Windows are slices of this one tensor, so overlapping windows share their initial noise (the
    original's explicit "overlap copy" is an identity and is not repeated here).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, layout.length, channels, height, width, generator=generator)
