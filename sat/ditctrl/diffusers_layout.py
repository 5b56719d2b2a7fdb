"""The Hugging Face (diffusers) layout of CogVideoX: one folder with every part (docs/weights.md, "Diffusers layout").

    model_index.json  transformer/  vae/  text_encoder/  tokenizer/  scheduler/

Tensor names: each `NameRule` says which diffusers tensors hold one of our tensors, as data read in
both directions (diffusers -> ours when loading, ours -> diffusers when the synthetic writer writes
this layout). Model shape: from `transformer/config.json` and `vae/config.json`, checked against what
this implementation supports; the schedule's SNR shift from `scheduler/scheduler_config.json`.

torch is imported only where tensors are split or joined, so the layout and its configs are read before it loads.
"""
import os
import re
from dataclasses import dataclass

from .checkpoints import MissingCheckpointError, SafetensorsSource, _read_json
from .config import check_model_value

MODEL_INDEX = "model_index.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PIPELINE_CLASS = "CogVideoXPipeline"
SUPPORTED = "supported: CogVideoX-2b and CogVideoX-5b text-to-video (THUDM/CogVideoX-2b, THUDM/CogVideoX-5b)"


@dataclass(frozen=True)
class NameRule:
    """Our tensor `ours` is `blocks` equal row blocks; `parts` are (diffusers name, our block indices in order).

    Placeholders: {i}, {j} layer / block numbers, {p} the rest of the name, {side} encoder or decoder;
    {r} on the diffusers side is the level {i} counted from the other end (the VAE's reversed up-blocks).
    `parts` empty: the tensor is not stored in the diffusers files (recomputed).
    """
    ours: str
    blocks: int
    parts: tuple

    def pattern(self) -> re.Pattern:
        regex = re.escape(self.ours)
        for name, group in (("i", r"\d+"), ("j", r"\d+"), ("side", "encoder|decoder"), ("p", ".+")):
            regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})")
        return re.compile(regex + "$")


def rename(ours: str, theirs: str) -> NameRule:
    return NameRule(ours, 1, ((theirs, (0,)),))


ADALN_NORM1_BLOCKS = (0, 1, 2, 6, 7, 8)  # diffusers norm1: shift, scale, gate of video, then of text (attention)
ADALN_NORM2_BLOCKS = (3, 4, 5, 9, 10, 11)  # diffusers norm2: the same for the MLP
LAYER = "transformer_blocks.{i}."
TRANSFORMER_NAMES = (
    NameRule("mixins.pos_embed.pos_embedding", 1, ()),
    rename("time_embed.0.{p}", "time_embedding.linear_1.{p}"),
    rename("time_embed.2.{p}", "time_embedding.linear_2.{p}"),
    rename("mixins.patch_embed.{p}", "patch_embed.{p}"),
    rename("transformer.final_layernorm.{p}", "norm_final.{p}"),
    rename("mixins.final_layer.norm_final.{p}", "norm_out.norm.{p}"),
    rename("mixins.final_layer.adaLN_modulation.1.{p}", "norm_out.linear.{p}"),
    rename("mixins.final_layer.linear.{p}", "proj_out.{p}"),
    NameRule("mixins.adaln_layer.adaLN_modulations.{i}.1.{p}", 12,
             ((LAYER + "norm1.linear.{p}", ADALN_NORM1_BLOCKS), (LAYER + "norm2.linear.{p}", ADALN_NORM2_BLOCKS))),
    rename("mixins.adaln_layer.query_layernorm_list.{i}.{p}", LAYER + "attn1.norm_q.{p}"),
    rename("mixins.adaln_layer.key_layernorm_list.{i}.{p}", LAYER + "attn1.norm_k.{p}"),
    NameRule("transformer.layers.{i}.attention.query_key_value.{p}", 3,
             ((LAYER + "attn1.to_q.{p}", (0,)), (LAYER + "attn1.to_k.{p}", (1,)), (LAYER + "attn1.to_v.{p}", (2,)))),
    rename("transformer.layers.{i}.attention.dense.{p}", LAYER + "attn1.to_out.0.{p}"),
    rename("transformer.layers.{i}.input_layernorm.{p}", LAYER + "norm1.norm.{p}"),
    rename("transformer.layers.{i}.post_attention_layernorm.{p}", LAYER + "norm2.norm.{p}"),
    rename("transformer.layers.{i}.mlp.dense_h_to_4h.{p}", LAYER + "ff.net.0.proj.{p}"),
    rename("transformer.layers.{i}.mlp.dense_4h_to_h.{p}", LAYER + "ff.net.2.{p}"),
)
VAE_NAMES = (  # first match wins
    rename("encoder.down.{i}.block.{j}.nin_shortcut.{p}", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{p}"),
    rename("encoder.down.{i}.block.{j}.{p}", "encoder.down_blocks.{i}.resnets.{j}.{p}"),
    rename("encoder.down.{i}.downsample.{p}", "encoder.down_blocks.{i}.downsamplers.0.{p}"),
    rename("decoder.up.{i}.block.{j}.nin_shortcut.{p}", "decoder.up_blocks.{r}.resnets.{j}.conv_shortcut.{p}"),
    rename("decoder.up.{i}.block.{j}.{p}", "decoder.up_blocks.{r}.resnets.{j}.{p}"),
    rename("decoder.up.{i}.upsample.{p}", "decoder.up_blocks.{r}.upsamplers.0.{p}"),
    rename("{side}.mid.block_1.{p}", "{side}.mid_block.resnets.0.{p}"),
    rename("{side}.mid.block_2.{p}", "{side}.mid_block.resnets.1.{p}"),
    rename("{p}", "{p}"),
)


class NameMap:
    """A rule table applied to our names; `levels` numbers the VAE's levels for the reversed {r}."""

    def __init__(self, rules, levels: int = 0):
        self.rules = [(rule, rule.pattern()) for rule in rules]
        self.levels = levels

    def parts(self, ours: str):
        """(blocks, [(diffusers name, our block indices)]) of one of our tensor names."""
        for rule, pattern in self.rules:
            match = pattern.match(ours)
            if match:
                fields = match.groupdict()
                if "i" in fields:
                    fields["r"] = str(self.levels - 1 - int(fields["i"]))
                return rule.blocks, [(theirs.format(**fields), blocks) for theirs, blocks in rule.parts]
        raise KeyError(f"no diffusers name for {ours}")

    def diffusers_shapes(self, shapes: dict) -> dict:
        """Our name -> shape, as diffusers name -> shape."""
        out = {}
        for ours, shape in shapes.items():
            blocks, parts = self.parts(ours)
            for theirs, indices in parts:
                out[theirs] = (shape[0] // blocks * len(indices), *shape[1:])
        return out

    def to_diffusers(self, state_dict: dict) -> dict:
        """Our state dict as diffusers tensors (the writer's direction)."""
        import torch

        out = {}
        for ours, value in state_dict.items():
            blocks, parts = self.parts(ours)
            chunks = value.chunk(blocks) if parts else ()
            for theirs, indices in parts:
                out[theirs] = torch.cat([chunks[k] for k in indices]).contiguous()
        return out

    def from_diffusers(self, ours: str, read):
        """Our tensor `ours`, assembled from `read(diffusers name)` (the loader's direction)."""
        import torch

        blocks, parts = self.parts(ours)
        placed = [None] * blocks
        for theirs, indices in parts:
            for k, chunk in zip(indices, read(theirs).chunk(len(indices))):
                placed[k] = chunk
        return torch.cat(placed) if blocks > 1 else placed[0]


class DiffusersSource:
    """A diffusers component folder read under our names (a tensor source for `checkpoints.load_strict`)."""

    def __init__(self, folder, names: NameMap):
        self.files, self.names = SafetensorsSource(folder, WEIGHTS_NAME), names

    def check(self, expected, what, ignore=()):
        """The files hold exactly the diffusers tensors our `expected` shapes map to; errors name diffusers tensors."""
        stored = {ours: shape for ours, shape in expected.items() if self.has(ours)}
        self.files.check(self.names.diffusers_shapes(stored), what)

    def has(self, name) -> bool:
        return bool(self.names.parts(name)[1])

    def tensor(self, name, device, dtype):
        return self.names.from_diffusers(name, lambda theirs: self.files.tensor(theirs, device, dtype))


def detect_layout(folder) -> str | None:
    """'diffusers' (model_index.json), 'sat' (a transformer folder with `latest`) or None."""
    if os.path.isfile(os.path.join(folder, MODEL_INDEX)):
        return "diffusers"
    if os.path.isfile(os.path.join(folder, "latest")):
        return "sat"
    return None


# Model shape: (our network param, diffusers transformer/config.json field); hidden_size is heads x head dim.
TRANSFORMER_FIELDS = (
    ("num_layers", "num_layers"), ("num_attention_heads", "num_attention_heads"),
    ("time_embed_dim", "time_embed_dim"), ("text_hidden_size", "text_embed_dim"),
    ("text_length", "max_text_seq_length"), ("in_channels", "in_channels"), ("out_channels", "out_channels"),
    ("patch_size", "patch_size"), ("latent_height", "sample_height"), ("latent_width", "sample_width"),
    ("num_frames", "sample_frames"), ("time_compressed_rate", "temporal_compression_ratio"),
    ("spatial_interpolation", "spatial_interpolation_scale"),
    ("temporal_interpolation", "temporal_interpolation_scale"),
    ("elementwise_affine", "norm_elementwise_affine"),
    ("rotary_position_embedding", "use_rotary_positional_embeddings"),
)
NETWORK, FIRST_STAGE = "network_config.params", "first_stage_config.params"
# (our VAE param, diffusers vae/config.json field, diffusers' default when absent)
VAE_FIELDS = (("num_res_blocks", "layers_per_block", 3), ("z_channels", "latent_channels", 16),
              ("temporal_compress_times", "temporal_compression_ratio", 4))
# Fields whose value this implementation has built in (diffusers' defaults for CogVideoX 1.0).
TRANSFORMER_FIXED = {
    "activation_fn": "gelu-approximate", "attention_bias": True, "flip_sin_to_cos": True, "freq_shift": 0,
    "norm_eps": 1e-5, "timestep_activation_fn": "silu", "use_learned_positional_embeddings": False,
    "patch_size_t": None, "ofs_embed_dim": None, "patch_bias": True,
}
VAE_FIXED = {
    "in_channels": 3, "out_channels": 3, "norm_num_groups": 32, "norm_eps": 1e-6, "act_fn": "silu",
    "use_quant_conv": False, "use_post_quant_conv": False,
}
# The schedule the sampler implements; only the SNR shift is taken from the folder.
SCHEDULER_FIXED = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
}


def _component(folder, name, file_name="config.json") -> tuple[str, dict]:
    path = os.path.join(folder, name, file_name)
    if not os.path.isfile(path):
        raise MissingCheckpointError(path)
    return path, _read_json(path)


def _check_fixed(path, config, fixed) -> None:
    for field, value in fixed.items():
        if config.get(field, value) != value:
            raise ValueError(f"{path}: {field} = {config[field]!r}, this implementation supports only {value!r}; "
                             f"{SUPPORTED}")


def _refuse_unsupported_transformer(path, config) -> None:
    if config.get("in_channels", 16) != 16 or config.get("use_learned_positional_embeddings"):
        raise ValueError(f"{path}: an image-to-video checkpoint (in_channels {config.get('in_channels')}, "
                         f"learned position embeddings); {SUPPORTED}")
    if config.get("patch_size_t") is not None or config.get("ofs_embed_dim") is not None:
        raise ValueError(f"{path}: a CogVideoX1.5 checkpoint (temporal patching, patch_size_t "
                         f"{config.get('patch_size_t')}); {SUPPORTED}")


@dataclass(frozen=True)
class FolderModel:
    """The `model` config values a diffusers folder fixes, as dotted keys (e.g. network_config.params.num_layers),
    and where each comes from ("<file>: <field>"), so that a check of a value names the folder's file, not the config."""
    values: dict
    origins: dict


def read_model_configs(folder) -> FolderModel:
    """The `model` values a diffusers folder fixes: network and VAE shape, the T5 context length (the transformer's
    text length), scale factor and SNR shift. Their types and ranges are checked with the config's rules
    (`config.validate_model`, given `origins`); here only what the values are computed from.

    Image-to-video, CogVideoX1.5 and any other model this implementation does not compute are refused.
    """
    index_path, index = os.path.join(folder, MODEL_INDEX), _read_json(os.path.join(folder, MODEL_INDEX))
    pipeline = index.get("_class_name")
    if pipeline != PIPELINE_CLASS:
        kind = "an image-to-video pipeline" if "Image" in str(pipeline) else "not a text-to-video CogVideoX pipeline"
        raise ValueError(f"{index_path}: _class_name {pipeline!r} is {kind}; {SUPPORTED}")
    values, origins = {}, {}

    def take(key, value, path, field):
        values[key], origins[key] = value, f"{path}: {field}"

    path, transformer = _component(folder, "transformer")
    _refuse_unsupported_transformer(path, transformer)
    _check_fixed(path, transformer, TRANSFORMER_FIXED)
    transformer = {"use_rotary_positional_embeddings": False, **transformer}  # absent from older 2B configs
    missing = [theirs for theirs in [t for _, t in TRANSFORMER_FIELDS] + ["attention_head_dim"] if theirs not in transformer]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)}; {SUPPORTED}")
    for ours, theirs in TRANSFORMER_FIELDS:
        take(f"{NETWORK}.{ours}", transformer[theirs], path, theirs)
    heads, head_dim = transformer["num_attention_heads"], transformer["attention_head_dim"]
    check_model_value(f"{NETWORK}.num_attention_heads", heads, f"{path}: num_attention_heads")
    check_model_value(f"{NETWORK}.hidden_size", head_dim, f"{path}: attention_head_dim")  # also an int > 0
    take(f"{NETWORK}.hidden_size", heads * head_dim, path, "num_attention_heads x attention_head_dim")
    take("conditioner_config.params.max_length", transformer["max_text_seq_length"], path, "max_text_seq_length")

    path, vae = _component(folder, "vae")
    _check_fixed(path, vae, VAE_FIXED)
    widths = vae.get("block_out_channels")
    check_model_value(f"{FIRST_STAGE}.ch_mult", widths, f"{path}: block_out_channels")
    if any(width % widths[0] for width in widths):
        raise ValueError(f"{path}: block_out_channels {widths} must be multiples of the first; {SUPPORTED}")
    take(f"{FIRST_STAGE}.ch", widths[0], path, "block_out_channels")
    take(f"{FIRST_STAGE}.ch_mult", [width // widths[0] for width in widths], path, "block_out_channels")
    for ours, theirs, default in VAE_FIELDS:
        take(f"{FIRST_STAGE}.{ours}", vae.get(theirs, default), path, theirs)
    take("scale_factor", vae.get("scaling_factor", 1.15258426), path, "scaling_factor")

    path, scheduler = _component(folder, "scheduler", "scheduler_config.json")
    _check_fixed(path, scheduler, SCHEDULER_FIXED)
    take("sampler_config.params.shift_scale", scheduler.get("snr_shift_scale", 3.0), path, "snr_shift_scale")
    return FolderModel(values, origins)


def transformer_config(network: dict) -> dict:
    """`transformer/config.json` for our network params (the writer's direction of TRANSFORMER_FIELDS)."""
    config = {"_class_name": "CogVideoXTransformer3DModel", **TRANSFORMER_FIXED}
    config.update({theirs: network[ours] for ours, theirs in TRANSFORMER_FIELDS if ours in network})
    config["use_rotary_positional_embeddings"] = bool(network.get("rotary_position_embedding", False))
    config["attention_head_dim"] = network["hidden_size"] // network["num_attention_heads"]
    return config


def vae_config(params: dict, scale_factor: float) -> dict:
    levels = len(params["ch_mult"])
    return {
        "_class_name": "AutoencoderKLCogVideoX", **VAE_FIXED,
        "block_out_channels": [params["ch"] * m for m in params["ch_mult"]],
        "down_block_types": ["CogVideoXDownBlock3D"] * levels, "up_block_types": ["CogVideoXUpBlock3D"] * levels,
        **{theirs: params[ours] for ours, theirs, _ in VAE_FIELDS}, "scaling_factor": scale_factor,
    }


def scheduler_config(shift_scale: float) -> dict:
    return {"_class_name": "CogVideoXDDIMScheduler", **SCHEDULER_FIXED, "snr_shift_scale": shift_scale,
            "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0}


def model_index() -> dict:
    return {"_class_name": PIPELINE_CLASS, "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
            "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "CogVideoXTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLCogVideoX"]}

