"""What every entry script does before sampling: resolve, validate, check weights, prepare outputs.

All user errors surface here as one line (`error: ...`, exit status 2) before any model is built.
"""
import sys
from contextlib import contextmanager

import torch

from .checkpoints import MissingCheckpointError
from .config import (announce_overwrites, check_index_range, expand_prompts, parse_cli, prepare_output_dir,
                     resolve_device, write_resolved_config)
from .pipeline import Pipeline, check_weights, weight_paths
from .synthetic_checkpoint import ensure_synthetic_checkpoints
from .text_encoder import T5Tokens

RANDOM_WEIGHTS_NOTE = ("note: --tiny samples a tiny random-weight CogVideoX: the video checks the pipeline, "
                       "not the picture (real videos need the real CogVideoX-2B weights, see README.md)")


@contextmanager
def user_errors():
    """Turn configuration, layout and missing-weight errors into one line on stderr and exit status 2."""
    try:
        yield
    except (ValueError, MissingCheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def check_model_fit(cfg) -> None:
    """The window fits the model (odd, within its position table); controlled steps and layers exist."""
    args = cfg.args
    network = cfg.model.network_config.params
    latent_frames = (network.num_frames - 1) // network.time_compressed_rate + 1
    tile = args.sampling_num_frames
    if tile % 2 == 0 or tile > latent_frames:
        raise ValueError(f"args.sampling_num_frames = {tile}: must be odd (the VAE decodes 1 + 2k latent frames) "
                         f"and at most {latent_frames}, the latent frames this model was trained with")
    num_layers = network.num_layers
    num_steps = cfg.model.sampler_config.params.num_steps
    ranges = [("layer_idx", num_layers), ("step_idx", num_steps)]
    if "VisualizeAdaLNMixin" in args.adaln_mixin_names:
        ranges += [("attn_map_layer_idx", num_layers), ("attn_map_step_idx", num_steps)]
    for name, upper in ranges:
        check_index_range(name, args[name], upper)
    check_index_range("start_layer", args.start_layer, num_layers)
    check_index_range("start_step", args.start_step, num_steps)


def token_counts(tokenize, prompts) -> list:
    """Tokens of each prompt: its pieces plus </s> (pads are id 0)."""
    return [int((row != 0).sum()) for row in tokenize(prompts)]


def check_token_indices(counts, checks) -> None:
    """`checks`: (key name, indices, prompt positions); every index must name a real token (not padding).

    The error shows how many tokens the prompt has and how to list them.
    """
    for key, indices, positions in checks:
        for p in positions:
            count = counts[p]
            for index in [indices] if isinstance(indices, int) else indices:
                if not 0 <= index < count:
                    raise ValueError(f"args.{key} = {index} is outside prompt {p} ({count} tokens including </s>): "
                                     f"list them with python sat/show_tokens.py --prompt \"...\"")


def start_run(argv, planned_outputs, check_prompts=None):
    """Parse and validate; `planned_outputs(cfg, prompts)` returns the files this run will write.

    `check_prompts(args, prompts, counts)` validates the prompts against their token counts (token
    indices, equal lengths) with the tokenizer alone, before any model is loaded.
    Returns (cfg, prompts, plan, pipeline) with the output folder prepared, its resolved config
    written and the models built (T5 ready to encode).
    """
    cfg = parse_cli(argv)
    prompts = expand_prompts(cfg.args)
    if "tiny_t5" in cfg.model:
        print(RANDOM_WEIGHTS_NOTE)
        ensure_synthetic_checkpoints(cfg)  # the tiny model's weights are written on first use
    check_weights(cfg)  # a diffusers folder's configs fix the model shape that check_model_fit uses
    check_model_fit(cfg)
    plan = planned_outputs(cfg, prompts)
    if check_prompts is not None:
        tokens = T5Tokens(weight_paths(cfg)["tokenizer"], cfg.model.conditioner_config.params.max_length)
        check_prompts(cfg.args, prompts, token_counts(tokens.tokenize, prompts))
    device = resolve_device(cfg.args.device)
    announce_overwrites(prepare_output_dir(cfg.args.output_dir, plan.files))
    write_resolved_config(cfg, cfg.args.output_dir)
    return cfg, prompts, plan, Pipeline(cfg, device)


def seed_everything(seed: int) -> None:
    """Seed the CPU and CUDA generators (the SDE noise comes from the sampling device's generator)."""
    torch.manual_seed(seed)
