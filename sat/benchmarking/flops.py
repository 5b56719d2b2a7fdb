"""FLOP counts of the CogVideoX DiT (docs/performance.md, "FLOP counts"); a multiply-add counts as 2.

Only matrix products are counted (linear layers, the patch convolution, QKᵀ and PV);
norms, activations, biases and the softmax are left out. All counts are per batch row.
"""
import inspect
from dataclasses import dataclass
from typing import Mapping

from ditctrl.dit import DiffusionTransformer


@dataclass(frozen=True)
class DiTSize:
    """The shape parameters of `DiffusionTransformer` that its cost depends on."""
    num_layers: int
    hidden_size: int
    time_embed_dim: int
    text_hidden_size: int
    text_length: int
    in_channels: int
    out_channels: int
    patch_size: int
    latent_height: int
    latent_width: int

    @classmethod
    def from_network_params(cls, params: Mapping) -> "DiTSize":
        """From `model.network_config.params`; keys it omits take `DiffusionTransformer`'s defaults."""
        parameters = inspect.signature(DiffusionTransformer).parameters.values()
        defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
        values = {**defaults, **params}
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    def video_tokens(self, latent_frames: int) -> int:
        return latent_frames * (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    def sequence_length(self, latent_frames: int) -> int:
        """N: text tokens first, then the video tokens of `latent_frames` frames."""
        return self.text_length + self.video_tokens(latent_frames)


def linear_flops_per_layer(tokens: int, hidden: int) -> int:
    """QKV (d→3d), attention output (d→d) and MLP (d→4d→d) on `tokens` tokens: 2·N·12d²."""
    return 2 * tokens * (hidden * 3 * hidden + hidden * hidden + 2 * hidden * 4 * hidden)


def attention_flops_per_layer(tokens: int, hidden: int) -> int:
    """QKᵀ and PV over all heads, every token attending to every token: 2·N²·d each."""
    return 4 * tokens * tokens * hidden


def layer_flops(size: DiTSize, latent_frames: int) -> int:
    """One transformer layer for one row: linear + attention + its adaLN modulation (t_emb → 12d)."""
    tokens, d = size.sequence_length(latent_frames), size.hidden_size
    adaln = 2 * size.time_embed_dim * 12 * d
    return linear_flops_per_layer(tokens, d) + attention_flops_per_layer(tokens, d) + adaln


def outer_flops(size: DiTSize, latent_frames: int) -> int:
    """Everything outside the layers for one row: time MLP, patch and text embedding, final adaLN and projection."""
    d, t, p = size.hidden_size, size.time_embed_dim, size.patch_size
    video = size.video_tokens(latent_frames)
    time_mlp = 2 * (d * t + t * t)
    patch_embed = 2 * video * size.in_channels * p * p * d
    text_embed = 2 * size.text_length * size.text_hidden_size * d
    final = 2 * t * 2 * d + 2 * video * d * p * p * size.out_channels
    return time_mlp + patch_embed + text_embed + final


def forward_flops(size: DiTSize, latent_frames: int, batch: int = 1) -> int:
    """One DiT forward of `batch` rows of `latent_frames` latent frames each."""
    return batch * (size.num_layers * layer_flops(size, latent_frames) + outer_flops(size, latent_frames))


def run_flops(size: DiTSize, latent_frames: int, row_layers: int) -> int:
    """A run of `row_layers` row×layer evaluations (`work_counts.row_layer_count`) on windows of `latent_frames`.

    The layer-independent part is charged once per `num_layers` row-layers (0.01 % of the total at full size).
    """
    outer = row_layers * outer_flops(size, latent_frames) // size.num_layers
    return row_layers * layer_flops(size, latent_frames) + outer
