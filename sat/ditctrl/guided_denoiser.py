"""The DiT as a guided x0 predictor: v-prediction, table-snapped scalings, dynamic CFG (cogvideox.md §3.3-3.4)."""
import torch

from .denoiser import dynamic_cfg_scale, guide, quantize_alpha, v_to_x0
from .dit import TransformerState
from .schedule import denoiser_table


class GuidedDenoiser:
    """guided x0 of latents x (B, T, C, H, W) given per-row text `cond` and `uncond` (B, L, D).

    The DiT batch is [uncond rows; cond rows], so for a source/target pair x = [x_s, x_t] it is
    (u_s, u_t, c_s, c_t), the order the attention controllers rely on.

    The DiT can also be run in two parts: `begin` takes each sample through the first layers
    (its two rows (uncond, cond) kept as one state per sample) and `finish` batches any such
    states and runs the remaining layers, so that a sample's first layers are computed once
    for several batches.
    """

    def __init__(self, model, cfg_scale: float = 6.0, cfg_exp: float = 5.0, num_steps: int = 50):
        self.model = model
        self.cfg_scale, self.cfg_exp, self.num_steps = cfg_scale, cfg_exp, num_steps
        self.table = denoiser_table()

    def __call__(self, x, step, alpha, timestep, cond, uncond, pair=None) -> torch.Tensor:
        x2 = torch.cat([x, x])
        v = self.model(x2, self._timesteps(x2, timestep), torch.cat([uncond, cond]), step=step, pair=pair)
        return self._guided_x0(x2, v, alpha, timestep)

    def begin(self, x, step, timestep, cond, uncond, stop: int) -> list[TransformerState]:
        """One state per sample of x: its rows (uncond, cond) after DiT layers [0, stop)."""
        x2 = torch.cat([x, x])
        state = self.model.embed(x2, self._timesteps(x2, timestep), torch.cat([uncond, cond]))
        state = self.model.run_layers(state, 0, stop, step=step)
        batch = x.shape[0]
        return [state.rows([b, batch + b]) for b in range(batch)]

    def finish(self, x, states, step, alpha, timestep, start: int, pair=None) -> torch.Tensor:
        """guided x0 of x (B, ...) from its samples' `begin` states: DiT layers [start, end), head and CFG."""
        batch = TransformerState.cat([s.rows(slice(0, 1)) for s in states] + [s.rows(slice(1, 2)) for s in states])
        model = self.model
        v = model.head(model.run_layers(batch, start, model.num_layers, step=step, pair=pair))
        return self._guided_x0(torch.cat([x, x]), v, alpha, timestep)

    @staticmethod
    def _timesteps(x2, timestep) -> torch.Tensor:
        return torch.full((x2.shape[0],), float(timestep), device=x2.device)

    def _guided_x0(self, x2, v, alpha, timestep) -> torch.Tensor:
        """v (2B, ...) of the batch x2 = [x; x] ([uncond; cond] rows) -> guided x0 (B, ...), fp32."""
        x0_uncond, x0_cond = v_to_x0(x2, v, quantize_alpha(alpha, self.table).item()).chunk(2)
        return guide(x0_uncond, x0_cond, dynamic_cfg_scale(timestep, self.cfg_scale, self.cfg_exp, self.num_steps))
