"""The DiT as a guided x0 predictor: v-prediction, table-snapped scalings, dynamic CFG (cogvideox.md §3.3-3.4)."""
import torch

from .denoiser import dynamic_cfg_scale, guide, quantize_alpha, v_to_x0
from .schedule import denoiser_table


class GuidedDenoiser:
    """guided x0 of latents x (B, T, C, H, W) given per-row text `cond` and `uncond` (B, L, D).

    The DiT batch is [uncond rows; cond rows], so for a source/target pair x = [x_s, x_t] it is
    (u_s, u_t, c_s, c_t), the order the attention controllers rely on.
    """

    def __init__(self, model, cfg_scale: float = 6.0, cfg_exp: float = 5.0, num_steps: int = 50):
        self.model = model
        self.cfg_scale, self.cfg_exp, self.num_steps = cfg_scale, cfg_exp, num_steps
        self.table = denoiser_table()

    def __call__(self, x, step, alpha, timestep, cond, uncond, pair=None) -> torch.Tensor:
        x2 = torch.cat([x, x])
        t = torch.full((x2.shape[0],), float(timestep), device=x.device)
        v = self.model(x2, t, torch.cat([uncond, cond]), step=step, pair=pair)
        x0_uncond, x0_cond = v_to_x0(x2, v, quantize_alpha(alpha, self.table).item()).chunk(2)
        return guide(x0_uncond, x0_cond, dynamic_cfg_scale(timestep, self.cfg_scale, self.cfg_exp, self.num_steps))
