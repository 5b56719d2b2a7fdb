"""CogVideoX-2B / 5B diffusion transformer as a SwissArmyTransformer `BaseModel` (docs/model.md, "DiT").

Mixins, added in the original's order and under the original's names so that checkpoint keys
match (`mixins.pos_embed.*`, `mixins.patch_embed.*`, `mixins.adaln_layer.*`, `mixins.final_layer.*`):

- `PositionEmbedding3DMixin` (2B): the fixed 3-D sin-cos table, added to the text+video sequence;
  `Rotary3DPositionEmbeddingMixin` (5B): 3-D rotary embedding of the video tokens' q and k;
- `PatchEmbeddingMixin`: 2×2 latent patches -> tokens, T5 features -> text tokens;
- `AdaLNMixin`: the whole CogVideoX block (adaLN-modulated LayerNorms, joint attention with
  per-head QK LayerNorm, MLP). Its attention goes through an exchangeable `AttentionController`;
- `FinalLayerMixin`: adaLN final norm, projection, unpatchify.

SAT supplies the layers' modules, the parameter names and the checkpoint format. The forward does not go through
SAT's transformer loop: it calls the mixins' hooks itself, in three parts (`embed`, `run_layers` over any layer
range, `head`), so that a forward can stop after any layer and resume there.
"""
import math
from argparse import Namespace
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from sat.model.base_model import BaseMixin, BaseModel

from . import block_elementwise
from .block_elementwise import modulate
from .attention import AttentionController
from .position_embedding import rotary_3d, rotate_pairs, sincos_3d


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) DDPM timesteps -> (B, dim) fp32 sinusoidal embedding, cosine half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PositionEmbedding3DMixin(BaseMixin):
    def __init__(self, hidden_size, text_length, frames, height, width, spatial_interpolation, temporal_interpolation):
        super().__init__()
        self.text_length, self.grid = text_length, (frames, height, width)
        self.table_args = (hidden_size, frames, height, width, spatial_interpolation, temporal_interpolation)
        self.register_buffer("pos_embedding", self.table())  # (1, text + F·h·w, d)

    def table(self) -> torch.Tensor:
        """The fixed table with zero rows for the text tokens, fp32 on the CPU."""
        video = sincos_3d(*self.table_args)
        return torch.cat([video.new_zeros(self.text_length, video.shape[1]), video])[None]

    def reinit(self, parent_model=None):
        """Recompute the table in place (after `to_empty`; checkpoints do not carry it)."""
        with torch.no_grad():
            self.pos_embedding.copy_(self.table())

    def position_embedding_forward(self, position_ids, **kw):
        frames, height, width = check_token_grid(kw["token_grid"], self.grid)
        return self.pos_embedding[:, : self.text_length + frames * height * width]


def check_token_grid(token_grid, configured):
    """`token_grid` (frames, rows, columns), if the position embedding built for `configured` covers it."""
    frames, height, width = token_grid
    if frames > configured[0] or (height, width) != tuple(configured[1:]):
        raise ValueError(f"latent token grid {frames}x{height}x{width} does not fit the position table "
                         f"{configured[0]}x{configured[1]}x{configured[2]} this model was configured for")
    return token_grid


class Rotary3DPositionEmbeddingMixin(BaseMixin):
    """Adds nothing to the tokens; `rotate` turns the video tokens' q and k (text tokens untouched)."""

    def __init__(self, head_dim, frames, height, width):
        super().__init__()
        self.grid = (frames, height, width)
        cos, sin = rotary_3d(head_dim, frames, height, width)
        self.register_buffer("freqs_cos", cos, persistent=False)  # (F·h·w, head_dim)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def reinit(self, parent_model=None):
        """Recompute the tables in place (after `to_empty`; checkpoints do not carry them)."""
        with torch.no_grad():
            for buffer, value in zip((self.freqs_cos, self.freqs_sin), rotary_3d(self.freqs_cos.shape[1], *self.grid)):
                buffer.copy_(value)

    def position_embedding_forward(self, position_ids, **kw):
        check_token_grid(kw["token_grid"], self.grid)
        return None

    def rotate(self, q, k, text_length, token_grid):
        """q, k (B, heads, N, d_head) with the video tokens [text_length:] rotated, in the model dtype."""
        frames, height, width = token_grid
        cos, sin = self.freqs_cos[: frames * height * width], self.freqs_sin[: frames * height * width]
        return tuple(torch.cat([x[:, :, :text_length], rotate_pairs(x[:, :, text_length:], cos, sin)], dim=2)
                     for x in (q, k))


class PatchEmbeddingMixin(BaseMixin):
    def __init__(self, in_channels, hidden_size, patch_size, text_hidden_size):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.text_proj = nn.Linear(text_hidden_size, hidden_size)

    def word_embedding_forward(self, input_ids, **kw):
        x = kw["latents"]  # (B, T, C, H, W)
        batch, frames = x.shape[:2]
        patches = self.proj(x.flatten(0, 1))  # (B·T, d, h, w)
        video = patches.flatten(2).transpose(1, 2).reshape(batch, -1, patches.shape[1])  # (B, T·h·w, d)
        text = self.text_proj(kw["context"])  # (B, L, d)
        return torch.cat([text, video], dim=1)


class AdaLNMixin(BaseMixin):
    """The CogVideoX transformer block; attention is delegated to `self.controller`."""

    def __init__(self, num_layers, hidden_size, num_heads, time_embed_dim, elementwise_affine=True):
        super().__init__()
        self.num_heads = num_heads
        self.adaLN_modulations = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, 12 * hidden_size)) for _ in range(num_layers))
        head_dim = hidden_size // num_heads
        self.query_layernorm_list = nn.ModuleList(
            nn.LayerNorm(head_dim, eps=1e-6, elementwise_affine=elementwise_affine) for _ in range(num_layers))
        self.key_layernorm_list = nn.ModuleList(
            nn.LayerNorm(head_dim, eps=1e-6, elementwise_affine=elementwise_affine) for _ in range(num_layers))
        self.controller = AttentionController()
        self.rotate = None  # (q, k, text_length, token_grid) -> rotated q, k; set for a rotary position embedding
        self.elementwise = block_elementwise.EAGER  # or block_elementwise.compiled() (`compile_elementwise`)

    def layer_forward(self, hidden_states, mask, *args, **kw):
        index = int(kw["layer_id"])
        layer = self.transformer.layers[index]
        text_length = kw["context"].shape[1]
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         t_shift_msa, t_scale_msa, t_gate_msa, t_shift_mlp, t_scale_mlp, t_gate_mlp) = \
            self.adaLN_modulations[index](kw["emb"]).chunk(12, dim=1)
        steps = self.elementwise
        ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
        normed = steps.pre_attention(hidden_states, text_length, ln1.weight, ln1.bias, ln1.eps,
                                     t_shift_msa, t_scale_msa, shift_msa, scale_msa)
        attended = self.attention(normed, layer.attention, index, text_length, kw["token_grid"])
        hidden, normed = steps.post_attention(hidden_states, attended, text_length, t_gate_msa, gate_msa,
                                              ln2.weight, ln2.bias, ln2.eps, t_shift_mlp, t_scale_mlp, shift_mlp,
                                              scale_mlp)
        mlp = layer.mlp
        out = F.linear(F.gelu(F.linear(normed, mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias), approximate="tanh"),
                       mlp.dense_4h_to_h.weight, mlp.dense_4h_to_h.bias)
        return steps.gated_residual(hidden, out, text_length, t_gate_mlp, gate_mlp)

    def attention(self, x, attention_module, index, text_length, token_grid):
        """Joint attention of one layer: QKV projection, per-head QK LayerNorm, rotary (5B), controller, output."""
        batch, length, width = x.shape
        qkv = F.linear(x, attention_module.query_key_value.weight, attention_module.query_key_value.bias)
        query_norm, key_norm = self.query_layernorm_list[index], self.key_layernorm_list[index]
        q, k, v = self.elementwise.qk_norm(qkv, self.num_heads, query_norm.weight, query_norm.bias,
                                           key_norm.weight, key_norm.bias, query_norm.eps)  # each (B, heads, N, d_head)
        if self.rotate is not None:
            q, k = self.rotate(q, k, text_length, token_grid)
        out = self.controller(q, k, v, index, text_length)  # (B, heads, N, d_head)
        out = out.transpose(1, 2).reshape(batch, length, width)
        return F.linear(out, attention_module.dense.weight, attention_module.dense.bias)


class FinalLayerMixin(BaseMixin):
    def __init__(self, hidden_size, time_embed_dim, patch_size, out_channels, elementwise_affine=True):
        super().__init__()
        self.patch_size, self.out_channels = patch_size, out_channels
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=elementwise_affine)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(time_embed_dim, 2 * hidden_size))

    def final_forward(self, logits, **kw):
        frames, height, width = kw["token_grid"]
        video = logits[:, kw["context"].shape[1]:]
        shift, scale = self.adaLN_modulation(kw["emb"]).chunk(2, dim=1)
        video = self.linear(modulate(self.norm_final(video), shift, scale))  # (B, T·h·w, c·p·p)
        p, c = self.patch_size, self.out_channels
        video = video.view(-1, frames, height, width, c, p, p)
        return video.permute(0, 1, 4, 2, 5, 3, 6).reshape(-1, frames, c, height * p, width * p)


@dataclass(frozen=True)
class TransformerState:
    """A DiT batch between two layers: hidden states plus the per-row inputs the layer and final hooks read."""
    hidden: torch.Tensor  # (B, text + video tokens, hidden)
    context: torch.Tensor  # (B, L, D) text features (the hooks read the text length from it)
    emb: torch.Tensor  # (B, time_embed_dim) timestep embedding
    token_grid: tuple  # (frames, rows, columns) of the video tokens

    def rows(self, index) -> "TransformerState":
        """The batch rows picked by `index` (a slice or a list of row numbers)."""
        return TransformerState(self.hidden[index], self.context[index], self.emb[index], self.token_grid)

    @staticmethod
    def cat(states) -> "TransformerState":
        """The states' rows stacked in order; all must share one token grid."""
        grids = {s.token_grid for s in states}
        if len(grids) != 1:
            raise ValueError(f"cannot batch states of different token grids {sorted(grids)}")
        return TransformerState(*(torch.cat([getattr(s, f) for s in states]) for f in ("hidden", "context", "emb")),
                                grids.pop())


class DiffusionTransformer(BaseModel):
    """v-prediction DiT: forward(latents (B,T,C,H,W), timesteps (B,), context (B,L,D)) -> (B,T,C,H,W)."""

    def __init__(self, *, num_layers, hidden_size, num_attention_heads, time_embed_dim, text_hidden_size,
                 text_length=226, in_channels=16, out_channels=16, patch_size=2, latent_height=60,
                 latent_width=90, num_frames=49, time_compressed_rate=4, spatial_interpolation=1.875,
                 temporal_interpolation=1.0, elementwise_affine=True, rotary_position_embedding=False,
                 skip_init=False):
        transformer_args = Namespace(
            num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
            vocab_size=1, max_sequence_length=64, layernorm_order="pre", skip_init=skip_init,
            model_parallel_size=1, is_decoder=False, checkpoint_activations=False)
        super().__init__(transformer_args)
        # The embeddings SAT builds by default are replaced by the mixins below (no such checkpoint keys).
        del self.transformer.word_embeddings, self.transformer.position_embeddings

        self.hidden_size, self.patch_size = hidden_size, patch_size
        latent_frames = (num_frames - 1) // time_compressed_rate + 1
        self.time_embed = nn.Sequential(
            nn.Linear(hidden_size, time_embed_dim), nn.SiLU(), nn.Linear(time_embed_dim, time_embed_dim))
        grid = (latent_frames, latent_height // patch_size, latent_width // patch_size)
        if rotary_position_embedding:
            position = Rotary3DPositionEmbeddingMixin(hidden_size // num_attention_heads, *grid)
        else:
            position = PositionEmbedding3DMixin(hidden_size, text_length, *grid, spatial_interpolation,
                                                temporal_interpolation)
        self.add_mixin("pos_embed", position)
        self.add_mixin("patch_embed", PatchEmbeddingMixin(in_channels, hidden_size, patch_size, text_hidden_size))
        self.add_mixin("adaln_layer", AdaLNMixin(num_layers, hidden_size, num_attention_heads, time_embed_dim,
                                                 elementwise_affine))
        if rotary_position_embedding:
            self.mixins["adaln_layer"].rotate = position.rotate
        self.add_mixin("final_layer", FinalLayerMixin(hidden_size, time_embed_dim, patch_size, in_channels,
                                                      elementwise_affine))

    @property
    def num_layers(self) -> int:
        return len(self.transformer.layers)

    @property
    def controller(self) -> AttentionController:
        return self.mixins["adaln_layer"].controller

    def set_controller(self, controller: AttentionController) -> None:
        """Swap the attention controller of every layer; the weights stay where they are."""
        self.mixins["adaln_layer"].controller = controller

    def compile_elementwise(self, enabled: bool) -> None:
        """Run the blocks' element-wise steps (norms, modulation, gates, residuals) `torch.compile`d, or eagerly.
        The controller and the matrix products stay eager; compiling happens at the first forward per shape."""
        self.mixins["adaln_layer"].elementwise = block_elementwise.compiled() if enabled else block_elementwise.EAGER

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype; `embed` casts the inputs to it."""
        return self.transformer.final_layernorm.weight.dtype

    def forward(self, latents, timesteps, context, step=None, pair=None):
        """`step` (sampler iteration) and `pair` (window pair) tell the controller where it is."""
        state = self.embed(latents, timesteps, context)
        self.controller.begin_forward(step, pair, state.token_grid)
        return self.head(self.run_layers(state, 0, self.num_layers))

    # The forward's three parts, each calling the mixins' SAT hooks as SAT's transformer loop would (the token ids,
    # position ids and attention mask of SAT's signatures are unused: None). The guided denoiser also runs them
    # separately, to compute layers shared by several batches once (`GuidedDenoiser.begin` / `finish`).

    def embed(self, latents, timesteps, context) -> TransformerState:
        """Patch and text embedding plus position embedding, and the timestep embedding the layers read."""
        dtype = self.dtype
        _, frames, _, height, width = latents.shape
        inputs = dict(latents=latents.to(dtype).contiguous(), context=context.to(dtype),
                      emb=self.time_embed(timestep_embedding(timesteps, self.hidden_size).to(dtype)),
                      token_grid=(frames, height // self.patch_size, width // self.patch_size))
        hidden = self.hooks["word_embedding_forward"](None, **inputs)
        position = self.hooks["position_embedding_forward"](None, **inputs)
        hidden = hidden if position is None else hidden + position
        return TransformerState(hidden, inputs["context"], inputs["emb"], inputs["token_grid"])

    def run_layers(self, state: TransformerState, start: int, stop: int) -> TransformerState:
        """Transformer layers [start, stop) on `state`. The controller's state is left as it is: the caller
        tells it where it is (`controller.begin_forward`) before the first range of a forward."""
        if not 0 <= start <= stop <= self.num_layers:
            raise ValueError(f"layer range [{start}, {stop}) is outside the model's {self.num_layers} layers")
        hidden = state.hidden
        for index in range(start, stop):
            hidden = self.hooks["layer_forward"](hidden, None, layer_id=torch.tensor(index), context=state.context,
                                                 emb=state.emb, token_grid=state.token_grid)
        return TransformerState(hidden, state.context, state.emb, state.token_grid)

    def head(self, state: TransformerState) -> torch.Tensor:
        """SAT's final LayerNorm and our final layer: hidden states -> v (B, T, C, H, W)."""
        return self.hooks["final_forward"](self.transformer.final_layernorm(state.hidden), context=state.context,
                                           emb=state.emb, token_grid=state.token_grid)
