"""The DiT as a guided x0 predictor: v-prediction, table-snapped scalings, dynamic CFG (docs/model.md)."""
import torch

from .denoiser import dynamic_cfg_scale, guide, quantize_alpha, v_to_x0
from .dit import TransformerState
from .pair_batch import guidance_batch, split_guidance
from .schedule import SHIFT_SCALE, denoiser_table


class GuidedDenoiser:
    """guided x0 of latents x (B, T, C, H, W) given per-row text `cond` and `uncond` (B, L, D).

    The DiT batch is `guidance_batch` (all uncond rows, then all cond rows), so for a source/target
    pair x = [x_s, x_t] it is a `PairBatch` (u_s, u_t, c_s, c_t), the order the attention controllers rely on.

    The DiT can also be run in two parts: `begin` takes each sample through the first layers
    (its two rows (uncond, cond) kept as one state per sample) and `finish` batches any such
    states and runs the remaining layers, so that a sample's first layers are computed once
    for several batches. Each part tells the controller where it is with its own `begin_forward`, so
    only controllers that keep no state across layers (`per_window_below_first_layer`) may be split.

    The dynamic-CFG scale takes two step counts, as the original's: `sampler_steps`, the sampler's
    (`model.sampler_config.params.num_steps`), and `cfg_steps`, the guider's own
    (`model.sampler_config.params.cfg_num_steps`, 50 in the original whatever the sampler's); see
    `dynamic_cfg_scale`. With `dynamic_cfg` False the guidance scale is `cfg_scale` at every step (DDIM inversion
    and its replay). `shift_scale` is the SNR shift of the table the sampler's alphas are snapped to: the
    sampler's own (2B 3.0, 5B 1.0), as the original's denoiser.
    """

    def __init__(self, model, *, sampler_steps: int, cfg_steps: int, cfg_scale: float = 6.0, cfg_exp: float = 5.0,
                 shift_scale: float = SHIFT_SCALE, dynamic_cfg: bool = True):
        self.model = model
        self.cfg_scale, self.cfg_exp = cfg_scale, cfg_exp
        self.sampler_steps, self.cfg_steps = sampler_steps, cfg_steps
        self.dynamic_cfg = dynamic_cfg
        self.table = denoiser_table(shift_scale)

    def __call__(self, x, step, alpha, timestep, cond, uncond, pair=None) -> torch.Tensor:
        x2 = guidance_batch(x, x)
        v = self.model(x2, self._timesteps(x2, timestep), guidance_batch(uncond, cond), step=step, pair=pair)
        return self._guided_x0(x2, v, alpha, timestep)

    def begin(self, x, step, timestep, cond, uncond, stop: int) -> list[TransformerState]:
        """One state per sample of x: its rows (uncond, cond) after DiT layers [0, stop)."""
        self._check_splittable()
        x2 = guidance_batch(x, x)
        state = self.model.embed(x2, self._timesteps(x2, timestep), guidance_batch(uncond, cond))
        self.model.controller.begin_forward(step, None, state.token_grid)
        state = self.model.run_layers(state, 0, stop)
        batch = x.shape[0]
        return [state.rows([b, batch + b]) for b in range(batch)]

    def finish(self, x, states, step, alpha, timestep, start: int, pair=None) -> torch.Tensor:
        """guided x0 of x (B, ...) from its samples' `begin` states: DiT layers [start, end), head and CFG."""
        self._check_splittable()
        batch = TransformerState.cat([s.rows(slice(0, 1)) for s in states] + [s.rows(slice(1, 2)) for s in states])
        model = self.model
        model.controller.begin_forward(step, pair, batch.token_grid)
        v = model.head(model.run_layers(batch, start, model.num_layers))
        return self._guided_x0(guidance_batch(x, x), v, alpha, timestep)

    def _check_splittable(self) -> None:
        controller = self.model.controller
        if not getattr(controller, "per_window_below_first_layer", False):
            raise ValueError(f"{type(controller).__name__} keeps state across layers: run whole forwards, "
                             "not layer ranges")

    @staticmethod
    def _timesteps(x2, timestep) -> torch.Tensor:
        return torch.full((x2.shape[0],), float(timestep), device=x2.device)

    def guidance_scale(self, timestep) -> float:
        """The classifier-free guidance scale at DDPM timestep `timestep`."""
        if not self.dynamic_cfg:
            return self.cfg_scale
        return dynamic_cfg_scale(timestep, scale=self.cfg_scale, exp=self.cfg_exp, sampler_steps=self.sampler_steps,
                                 cfg_steps=self.cfg_steps)

    def _guided_x0(self, x2, v, alpha, timestep) -> torch.Tensor:
        """v (2B, ...) of the batch x2 = [x; x] ([uncond; cond] rows) -> guided x0 (B, ...), fp32."""
        x0_uncond, x0_cond = split_guidance(v_to_x0(x2, v, quantize_alpha(alpha, self.table).item()))
        return guide(x0_uncond, x0_cond, self.guidance_scale(timestep))
