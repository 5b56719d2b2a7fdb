"""Running an entry script: every check before any model work, then one call to the generation API.

All user errors surface here as one line (`error: ...`, exit status 2) before any model is built.
Nothing heavy (torch, SAT, transformers) is imported until the command line, the config (a diffusers folder's
model included), the presence of every weight file and what the entry point can run are checked, so `--help`,
config errors and missing weights answer at once. The run's size is checked once the device is known, before
any list of its prompts or windows is built.
"""
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import replace

from .console import say
from .config import (announce_float16_on_the_cpu, announce_other_runs_files, announce_overwrites,
                     check_attention_backend, check_dtype_on_device, expand_prompts, is_full_size, original_keys_note,
                     parse_run_cli, prepare_output_dir, resolve_device, validate_model, write_resolved_config)
from .distributed import Ranks, distributed_run
from .errors import USER_ERRORS
from .output_files import OutputRun
from .entry_points import ENTRY_POINTS, MASK_GUIDED, check_run, check_token_indices, plan_notes, plan_run
from .run_size import check_run_size, prompt_count, run_size
from .synthetic_folders import ensure_synthetic_checkpoints
from .weights import check_weight_files, resolve_model


def random_weights_note(model_name: str) -> str:
    """What --tiny prints first: the video is noise; real videos need `model_name`'s weights (`model.name`)."""
    return ("note: --tiny samples a tiny random-weight CogVideoX: the video checks the pipeline, not the picture "
            f"(real videos need the real {model_name} weights, see README.md)")


@contextmanager
def user_errors():
    """Turn configuration, layout and missing-weight errors into one line on stderr and exit status 2."""
    try:
        yield
    except USER_ERRORS as error:
        say(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def token_counts(tokenize, prompts) -> list:
    """Tokens of each prompt: its pieces plus </s> (pads are id 0)."""
    return [int((row != 0).sum()) for row in tokenize(prompts)]


def prepare_run(entry_name: str, argv=None, ranks: Ranks = Ranks()):
    """Parse and check a run of entry point `entry_name`, prepare (and lock) its output folder and stage params.yaml.

    Returns (cfg, plan, device). With --tiny the tiny model's random weights are written on first use.
    With several `ranks` (call it inside `ranks.together()`) every rank checks; the first rank of each
    machine writes the tiny weights; rank 0 alone prepares and locks the output folder and stages
    params.yaml; each rank on CUDA uses its own GPU (LOCAL_RANK).
    """
    entry = ENTRY_POINTS[entry_name]
    cfg, tiny, requested = parse_run_cli(argv)
    cfg, origins = resolve_model(cfg, requested)  # a diffusers folder's model shape first: every check below uses it
    validate_model(cfg, origins)
    if tiny:
        say(random_weights_note(cfg.model.name))
        with ranks.together():  # the machine's other ranks wait for its weights
            if ranks.local_rank == 0:
                ensure_synthetic_checkpoints(cfg)
    paths = check_weight_files(cfg)
    check_run(entry, cfg, prompt_count(cfg.args))
    note = original_keys_note(cfg.args)
    if note:
        say(note)
    # the first check that imports torch; the model's size, not --tiny, says whether the CPU may be chosen unasked
    device = resolve_device(cfg.args.device, full_size=is_full_size(cfg.model.network_config.params))
    if ranks.size > 1 and device.startswith("cuda"):
        if ":" in device:
            raise ValueError(f"args.device is '{device}', but with several ranks each rank computes on the GPU its "
                             "LOCAL_RANK names; use auto or cuda")
        device = ranks.device
    if ranks.is_main:
        announce_float16_on_the_cpu(cfg.args, device)
    check_run_size(run_size(entry, cfg, on_gpu=device.startswith("cuda")), cfg.args.output_dir, device)
    prompts = expand_prompts(cfg.args)  # bounded now, as are the windows of the plan
    plan = plan_run(entry, cfg.args, prompts)
    for note in plan_notes(cfg, plan):
        say(note)
    from .pipeline import check_decode_memory, run_dtype
    from .weight_shapes import check_weight_shapes
    check_weight_shapes(cfg, paths)
    network, dtype = cfg.model.network_config.params, run_dtype(cfg.args)
    check_dtype_on_device(dtype, device)
    check_attention_backend(cfg.args.attention_backend, device, dtype,
                            network.hidden_size // network.num_attention_heads)
    check_decode_memory(cfg, plan.decoded_frames, device)
    from .text_encoder import T5Tokens
    tokens = T5Tokens(paths["tokenizer"], cfg.model.conditioner_config.params.max_length)
    check_token_indices(cfg.args, token_counts(tokens.tokenize, prompts))
    tokens.announce_cut_prompts(prompts)
    plan = replace(plan, prompt_pieces=tuple(tuple(piece for _, piece in tokens.tokens(p)) for p in prompts))
    mask_dirs = [cfg.args.mask_save_dir] if MASK_GUIDED in cfg.args.adaln_mixin_names and cfg.args.save_masks else []
    if ranks.is_main:
        announce_overwrites(prepare_output_dir(cfg.args.output_dir, plan.files, filter(None, mask_dirs)))
        write_resolved_config(cfg, cfg.args.output_dir)
    return cfg, plan, device


def run_entry(entry_name: str, argv=None) -> dict:
    """An entry script's whole run, on every rank of the job (distributed.py); returns the controllers by name after
    their generation."""
    with ExitStack() as stack:
        with user_errors():  # e.g. more ranks on this machine than GPUs
            ranks = stack.enter_context(distributed_run())
        with user_errors(), ranks.together():
            cfg, plan, device = prepare_run(entry_name, argv, ranks)
        from .generation import generate
        controllers = generate(cfg, plan, device, ranks)
        if ranks.is_main and OutputRun.active is not None:  # every file written: what else is there is another run's
            announce_other_runs_files(cfg.args.output_dir, OutputRun.active.files_left_as_they_were())
        return controllers
