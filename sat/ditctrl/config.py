"""Run configuration: merge YAML files and overrides, check every `args` key, prepare the output folder.

Merge order, lowest first: ``configs/inference.yaml`` (the default of every `args` key), each
``--base`` file (a model config may set its own `args` defaults), the tiny overlay with ``--tiny``,
the ``--custom-config`` case file, then ``key=value`` overrides. Mappings merge
deeply; lists and scalars replace. The set of `args` keys and each key's type come from
inference.yaml; only keys whose default does not show their type are declared here.
"""
import argparse
import difflib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .console import say
from .controllers import CONTROLLERS
from .output_files import OutputRun, first_line, make_folders, write_text

NUM_TRAIN_TIMESTEPS = 1000  # the DDPM discretisation CogVideoX was trained with (schedule.py builds on it)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
INFERENCE_CONFIG = os.path.join(CONFIG_DIR, "inference.yaml")
MODEL_CONFIG = os.path.join(CONFIG_DIR, "cogvideox_2b.yaml")
TINY_MODEL_CONFIG = os.path.join(CONFIG_DIR, "cogvideox_tiny.yaml")

SECTIONS = ("args", "model")
CONTROLLER_NAMES = tuple(CONTROLLERS)
PARAMS_FILE = "params.yaml"
CLI_SOURCE = "command line"
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_OVERRIDE_PATTERN = re.compile(r"(args|model)\.[\w.\-]+=")
SEED_LIMIT = 2**63  # torch generators take a signed 64-bit seed
NON_EMPTY_LISTS = ("ref_token_idx", "cur_token_idx", "attn_map_token_idx", "attn_map_step_idx", "attn_map_layer_idx",
                   "reweight_token_idx", "layer_idx", "step_idx")


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


class _Rejected(Exception):
    """Raised by `ArgType.normalise` for a value of the wrong type."""


@dataclass(frozen=True)
class ArgType:
    """The values one `args` key accepts."""

    description: str  # completes "args.<key> must be ...", e.g. "a list of ints"
    normalise: Callable[[Any], Any]  # accepted value -> canonical value; raises _Rejected otherwise


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a line break, tab or other control character (never meant in a path or file name)."""
    return any(ord(character) < 32 or ord(character) == 127 for character in text)


def _is_path(value) -> bool:
    return isinstance(value, str) and not has_control_characters(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _accepting(test: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda value: value):
    def normalise(value):
        if not test(value):
            raise _Rejected
        return convert(value)

    return normalise


def _list_of(item: ArgType, description: str) -> ArgType:
    def normalise(value):
        if not isinstance(value, list):
            raise _Rejected
        return [item.normalise(element) for element in value]

    return ArgType(description, normalise)


def _optional(kind: ArgType) -> ArgType:
    return ArgType(f"null or {kind.description}", lambda value: None if value is None else kind.normalise(value))


BOOL = ArgType("a bool", _accepting(lambda value: isinstance(value, bool)))
INT = ArgType("an int", _accepting(_is_int))
FLOAT = ArgType("a number", _accepting(lambda value: _is_int(value) or isinstance(value, float), float))
STR = ArgType("a string", _accepting(lambda value: isinstance(value, str)))
PATH = ArgType("a path (a string without line breaks or other control characters)",
               _accepting(_is_path, os.path.expanduser))  # ~ is the home folder
INT_LIST = _list_of(INT, "a list of ints")
STR_LIST = _list_of(STR, "a list of strings")
# A bare int stands for a one-element list.
TOKEN_LIST = ArgType("an int or a list of ints", lambda value: INT_LIST.normalise([value] if _is_int(value) else value))
# The original's device is an int: -1 picks the device, k is GPU k.
DEVICE = ArgType("auto, cpu, cuda, cuda:<index> or an int (the original's: -1 for auto, k for cuda:k)",
                 lambda value: value if isinstance(value, str) else
                 ("auto" if INT.normalise(value) == -1 else f"cuda:{value}"))
INT_OR_INT_LIST = ArgType(
    "an int or a list of ints", lambda value: value if _is_int(value) else INT_LIST.normalise(value)
)

# Keys whose inference.yaml default is null or does not show the type, and the paths.
_DECLARED_TYPES = {
    "load": PATH,
    "output_dir": PATH,
    "mask_save_dir": PATH,
    "layer_idx": _optional(INT_LIST),
    "step_idx": _optional(INT_LIST),
    "ref_token_idx": TOKEN_LIST,
    "cur_token_idx": TOKEN_LIST,
    "reweight_token_idx": INT_OR_INT_LIST,
    "reweight_scale": FLOAT,  # the default -5 reads as an int; cases use 0.5
    "prompts": _optional(STR_LIST),  # null until a case file or --prompts gives them
    "device": DEVICE,
}


@dataclass(frozen=True)
class OriginalKey:
    """One key of the original DiTCtrl's argument namespace, which its config files' `args:` may set."""

    default: Any          # the original's value: its inference.yaml's where that sets one, else its argparse default
    no_effect: str = ""   # why the key has no effect here; "" for a key this implementation reads (the args schema)
    allowed: tuple = ()   # the only values accepted ((): any); why another is refused: `refused`
    refused: str = ""


def _keys(no_effect: str = "", **defaults) -> dict:
    return {key: OriginalKey(default, no_effect) for key, default in defaults.items()}


_SAMPLING_ONLY = "SAT's training, evaluation and data options: these scripts only sample"
# Every key the original's `args:` sections may set: its inference.yaml's, its arguments.py's own, and the SAT 0.4.12
# (training, evaluation, data) and DeepSpeed arguments its arguments.py adds (the original copies a YAML key into
# the namespace when argparse declares it). A config copied from the original runs here unchanged: a key without
# effect is accepted with one note naming it and why (`original_keys_note`); only a value that asks for behaviour
# this implementation does not have is refused (`allowed`; is_edit's by the entry point, entry_points.check_is_edit).
ORIGINAL_KEYS = {
    **_keys(latent_channels=16, load="CogVideoX-2b-sat/transformer", sampling_num_frames=13, sampling_fps=16,
            fp16=True, bf16=False, is_run_isolated=False, seed=42, output_dir="outputs/multi_prompt_case",
            adaln_mixin_names=["KVSharingAdaLNMixin"], start_step=2, end_step=25, start_layer=25, end_layer=30,
            layer_idx=None, step_idx=None, thres=0.3, attn_map_step_idx=[4, 14, 24, 34, 44, 49],
            attn_map_layer_idx=[4, 14, 24, 29], mask_save_dir="", overlap_size=9, num_transition_blocks=2,
            longer_mid_segment=0, ref_token_idx=[0], cur_token_idx=[0], prompts=None, single_prompt_length=0,
            reweight_token_idx=0, reweight_scale=-5, device=-1),
    "mode": OriginalKey("inference", "these scripts always sample, in SAT's inference mode", ("inference",),
                        "SAT's training modes are not implemented: these scripts only sample"),
    **_keys("each script fixes its own batch (a window pair, or all prompts of a clip), as the original's did",
            batch_size=1),
    **_keys("the transformer checkpoint is always read without T5 and VAE weights", force_inference=True),
    "is_edit": OriginalKey(False, "every controller is told the true sampler step: what is_edit: True gave the "
                                  "original's edit script and is_edit: False its multi-prompt script", (True, False),
                           "the original's is_edit is a bool"),
    **_keys("command-line options (--base, --custom-config), not config keys", base=None, custom_config=""),
    **_keys("the original's sampling scripts set it to 1 (every GPU holds the whole model); several GPUs: --gpus N",
            model_parallel_size=1),
    **_keys("the ranks come from the launcher's environment (--gpus N or torchrun): NCCL on GPUs, gloo on the CPU",
            local_rank=None, distributed_backend="nccl"),
    **_keys("inputs of CogVideoX's own sampling script, which the original's DiTCtrl scripts did not read either",
            force_pretrain=False, debug=False, log_image=True, input_dir=None, input_type="cli",
            input_file="input.txt", final_size=2048, sdedit=False, grid_num_rows=1, lcm_steps=None,
            only_save_latents=False, only_log_video_latents=False, image2video=False),
    **_keys(_SAMPLING_ONLY, experiment_name="MyModel", train_iters=None, lr=1.0e-4, zero_stage=0,
            checkpoint_activations=False, checkpoint_num_layers=1, checkpoint_skip_layers=0,
            gradient_accumulation_steps=1, profiling=-1, epochs=None, log_interval=50, summary_dir="",
            save_args=False, lr_decay_iters=None, lr_decay_style="linear", lr_decay_ratio=0.1, warmup=0.01,
            weight_decay=0.01, save=None, force_train=False, save_interval=5000, no_save_rng=False,
            no_load_rng=False, resume_dataloader=False, exit_interval=None, wandb=False,
            wandb_project_name="default_project"),
    **_keys(_SAMPLING_ONLY, eval_batch_size=None, eval_iters=100, eval_interval=None, strict_eval=False),
    **_keys(_SAMPLING_ONLY, train_data=None, train_data_weights=None, iterable_dataset=False, iterable_dataset_eval="",
            batch_from_same_dataset=False, valid_data=None, test_data=None, split="1000,1,1", num_workers=1,
            block_size=10000, prefetch_factor=4),
    **_keys("DeepSpeed's options: these scripts run without DeepSpeed", deepspeed=False, deepspeed_config=None,
            deepscale=False, deepscale_config=None),
}
_SCALAR_TYPES = {bool: BOOL, int: INT, float: FLOAT, str: STR}
_LIST_TYPES = {int: INT_LIST, str: STR_LIST}


def _type_from_default(key: str, default) -> ArgType:
    if type(default) in _SCALAR_TYPES:
        return _SCALAR_TYPES[type(default)]
    if isinstance(default, list) and len({type(item) for item in default}) == 1 and type(default[0]) in _LIST_TYPES:
        return _LIST_TYPES[type(default[0])]
    raise ConfigError(f"cannot tell the type of args.{key} from its default {default!r} in {INFERENCE_CONFIG}")


@cache
def argument_schema() -> dict[str, ArgType]:
    """Every `args` key, in inference.yaml's order, with the type it accepts."""
    defaults = OmegaConf.to_container(_read_yaml(INFERENCE_CONFIG).args)
    return {key: _DECLARED_TYPES.get(key) or _type_from_default(key, value) for key, value in defaults.items()}


def _suggestion(word: str, choices: Iterable[str], otherwise: str = "") -> str:
    matches = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{matches[0]}'?" if matches else otherwise


def _yaml_problem(error: Exception) -> str:
    """One line of a YAML error: where (line, column), the cause, then what the parser was doing."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark, context = error.problem_mark, error.context
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        if context and error.context_mark:
            context += f" from line {error.context_mark.line + 1}"
        return where + error.problem + (f" ({context})" if context else "")
    if isinstance(error, yaml.reader.ReaderError):
        return f"character {error.position + 1}: {first_line(error)}"
    return first_line(error)


def _read_yaml(path: str):
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder, not a config file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        return OmegaConf.load(path)
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot parse {path}: not a UTF-8 text file ({first_line(error)})") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or first_line(error)}") from None
    except (yaml.YAMLError, OmegaConfBaseException) as error:
        raise ConfigError(f"cannot parse {path}: {_yaml_problem(error)}") from error


def _parse_overrides(overrides: Iterable[str]) -> DictConfig:
    overrides = list(overrides)
    for override in overrides:  # YAML would fold a line break into a space: another value than the one typed
        _require("\n" not in override and "\r" not in override,
                 f"the {CLI_SOURCE} override {override!r} holds a line break, which YAML reads as a space; remove it "
                 "(a prompt with line breaks goes after --prompts)")
    try:
        return OmegaConf.from_dotlist(overrides)
    except (yaml.YAMLError, OmegaConfBaseException) as error:
        raise ConfigError(f"cannot parse the {CLI_SOURCE} overrides: {_yaml_problem(error)}") from error


def _section(config: DictConfig, name: str, source: str) -> DictConfig:
    section = config.get(name)
    if section is None:
        return OmegaConf.create()
    if not isinstance(section, DictConfig):
        raise ConfigError(f"section '{name}' in {source} must be a mapping, got {section!r}")
    return section


def _checked_args(section: DictConfig, source: str) -> dict:
    """The section's values, each checked against the schema and normalised."""
    try:
        values = OmegaConf.to_container(section, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve the args of {source}: {first_line(error)}") from error
    schema = argument_schema()
    checked = {}
    for key, value in values.items():
        if key in ORIGINAL_KEYS and ORIGINAL_KEYS[key].no_effect:
            checked[key] = _checked_original_value(key, value, source)
            continue
        if key not in schema:
            raise ConfigError(f"unknown key '{key}' in {source} (args){_suggestion(str(key), schema)}")
        try:
            checked[key] = schema[key].normalise(value)
        except _Rejected:
            raise ConfigError(
                f"args.{key} must be {schema[key].description}, got {value!r} ({type(value).__name__}) in {source}"
            ) from None
    return checked


def _checked_original_value(key: str, value, source: str):
    """A value of an original key without effect here: any, unless it asks for behaviour this code does not have."""
    original = ORIGINAL_KEYS[key]
    if original.allowed and not any(type(value) is type(good) and value == good for good in original.allowed):
        choices = " or ".join(f"{key}: {good}" for good in original.allowed)
        raise ConfigError(f"args.{key} = {value!r} in {source}: {original.refused}; set {choices}, or delete the key")
    return value


def original_keys_note(args: Mapping) -> str | None:
    """One line naming the original's keys in `args` that have no effect here and why (None when there are none)."""
    keys_by_reason = {}
    for key in args:
        if key in ORIGINAL_KEYS and ORIGINAL_KEYS[key].no_effect:
            keys_by_reason.setdefault(ORIGINAL_KEYS[key].no_effect, []).append(key)
    if not keys_by_reason:
        return None
    return "note: keys of the original DiTCtrl without effect here: " + "; ".join(
        f"{', '.join(keys)} ({why})" for why, keys in keys_by_reason.items())


def _split_source(config, source: str) -> tuple[DictConfig, dict]:
    """One source's `model` section and its checked `args`."""
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{source} must be a mapping with the sections {', '.join(SECTIONS)}")
    for name in config:
        if name not in SECTIONS:
            is_arg = name in argument_schema() or name in ORIGINAL_KEYS
            hint = f"; did you mean 'args.{name}'?" if is_arg else _suggestion(name, SECTIONS)
            raise ConfigError(f"unknown section '{name}' in {source}{hint} (allowed: {', '.join(SECTIONS)})")
    return _section(config, "model", source), _checked_args(_section(config, "args", source), source)


def load_config(base_paths: Sequence[str], custom_path: str | None = None, overrides: Iterable[str] = (),
                require_prompts: bool = True) -> DictConfig:
    """Merge inference.yaml, the base files, the case file and dotted overrides into a checked config.

    The result has the sections `model` and `args`; `args` holds every schema key. Tools that only
    need the model (e.g. the synthetic-checkpoint writer) pass `require_prompts=False`.
    """
    return _load(base_paths, custom_path, overrides, require_prompts)[0]


def _load(base_paths, custom_path, overrides, require_prompts) -> tuple[DictConfig, DictConfig]:
    """`load_config`'s config, and the `model` settings the case file and the overrides asked for."""
    # inference.yaml is read first; naming it again in --base does not re-apply it over the model config's args.
    paths = [INFERENCE_CONFIG, *(p for p in base_paths if os.path.realpath(p) != os.path.realpath(INFERENCE_CONFIG))]
    sources = [_split_source(_read_yaml(path), path) for path in paths]
    base_model = OmegaConf.merge(*(model for model, _ in sources))
    overriding = [(_read_yaml(custom_path), custom_path)] if custom_path is not None else []
    overriding.append((_parse_overrides(overrides), CLI_SOURCE))
    for config, source in overriding:
        model, source_args = _split_source(config, source)
        _check_model_keys(model, base_model, source)
        _require("tiny_config" not in model,
                 f"model.tiny_config in {source} has no effect: --tiny adds the tiny config the --base files name; "
                 "to use another one, give it as the last --base file instead of --tiny")
        sources.append((model, source_args))
    args = {}
    for _, source_args in sources:
        args.update(source_args)
    validate_args(args, require_prompts)
    requested = OmegaConf.merge(*(model for model, _ in sources[-len(overriding):]))
    return OmegaConf.create({"model": OmegaConf.merge(*(model for model, _ in sources)), "args": args}), requested


def _check_model_keys(section: DictConfig, base: DictConfig, source: str, prefix: str = "model") -> None:
    """A case file or override may only change `model` keys the base configs define (typos are errors)."""
    for key in section:
        if key not in base:
            raise ConfigError(f"unknown key '{prefix}.{key}' in {source}{_suggestion(str(key), base)}")
        if isinstance(section[key], DictConfig) and isinstance(base[key], DictConfig):
            _check_model_keys(section[key], base[key], source, f"{prefix}.{key}")


def _require(condition, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _index_list(values) -> list[int]:
    """None, an int or a list of ints, as a list."""
    if values is None:
        return []
    return [values] if _is_int(values) else list(values)


def check_index_range(name: str, values, upper: int | None = None) -> None:
    """Check that every index in `args.<name>` (None, an int or a list) lies in [0, upper)."""
    allowed = "0 or more" if upper is None else f"0..{upper - 1}"
    for value in _index_list(values):
        _require(0 <= value and (upper is None or value < upper), f"args.{name} contains {value}; allowed: {allowed}")


def _check_prompts(prompts, single_prompt_length: int) -> None:
    _require(prompts, "args.prompts is not set: give a list of prompts in the case file or with --prompts")
    for index, prompt in enumerate(prompts):
        _require(prompt.strip(), f"args.prompts[{index}] is empty")
    if single_prompt_length > 0:
        _require(
            len(prompts) == 1,
            f"args.single_prompt_length ({single_prompt_length}) > 0 needs exactly one prompt, got {len(prompts)}",
        )


def _check_controllers(names) -> None:
    _require(names, "args.adaln_mixin_names is empty: name at least one controller")
    for name in names:
        _require(
            name in CONTROLLER_NAMES,
            f"unknown controller '{name}' in args.adaln_mixin_names"
            + _suggestion(name, CONTROLLER_NAMES, otherwise=f"; choices: {', '.join(CONTROLLER_NAMES)}"),
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    _require(not repeated, f"args.adaln_mixin_names lists {', '.join(repeated)} more than once; each controller "
                           "runs once per run")


def validate_args(args: Mapping, require_prompts: bool = True) -> None:
    """Check the `args` values that need no model; raise ConfigError on the first problem.

    Index ranges that depend on the model depth or the step count are checked by the caller with
    `check_index_range`.
    """
    for key in ("seed", "latent_channels", "sampling_num_frames", "sampling_fps"):
        _require(args[key] > 0, f"args.{key} must be > 0, got {args[key]}")
    _require(args["seed"] < SEED_LIMIT, f"args.seed must be < 2^63 = {SEED_LIMIT}, got {args['seed']}")
    for key in NON_EMPTY_LISTS:
        _require(args[key] != [], f"args.{key} is empty: give at least one index")
    for key in ("start_step", "start_layer", "overlap_size", "num_transition_blocks", "longer_mid_segment",
                "single_prompt_length", "reweight_kv_switch_step"):
        _require(args[key] >= 0, f"args.{key} must be >= 0, got {args[key]}")
    _require(0 <= args["thres"] <= 1, f"args.thres must lie in [0, 1], got {args['thres']}")
    for counter in ("step", "layer"):
        start, end = args[f"start_{counter}"], args[f"end_{counter}"]
        _require(start < end, f"args.start_{counter} ({start}) must be smaller than args.end_{counter} ({end})")
    for key in ("layer_idx", "step_idx", "attn_map_step_idx", "attn_map_layer_idx", "ref_token_idx", "cur_token_idx",
                "reweight_token_idx"):
        check_index_range(key, args[key])
    _require(not (args["fp16"] and args["bf16"]), "args.fp16 and args.bf16 are both True; choose one")
    _require(
        _DEVICE_PATTERN.fullmatch(args["device"]),
        f"args.device must be auto, cpu, cuda or cuda:<index>, got '{args['device']}'",
    )
    if require_prompts:
        _check_prompts(args["prompts"], args["single_prompt_length"])
    _check_controllers(args["adaln_mixin_names"])


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, float)


_POSITIVE_INT = ("an int > 0", lambda value: _is_int(value) and value > 0)
_POSITIVE_NUMBER = ("a number > 0", lambda value: _is_number(value) and value > 0)
_WHOLE_NUMBER = ("a whole number", lambda value: _is_number(value) and float(value).is_integer())
_NUMBER_AT_LEAST_0 = ("a number >= 0", lambda value: _is_number(value) and value >= 0)
_STEP_COUNT = (f"an int in 2..{NUM_TRAIN_TIMESTEPS}", lambda value: _is_int(value) and 2 <= value <= NUM_TRAIN_TIMESTEPS)
_TEXT = ("a string", lambda value: isinstance(value, str))
_PATH_TEXT = (PATH.description, _is_path)
_FLAG = ("a bool", lambda value: isinstance(value, bool))
_POSITIVE_INTS = ("a non-empty list of ints > 0",
                  lambda value: isinstance(value, list) and value and all(_POSITIVE_INT[1](item) for item in value))
_NETWORK_INTS = ("num_layers", "hidden_size", "num_attention_heads", "time_embed_dim", "text_hidden_size", "text_length",
                 "in_channels", "out_channels", "patch_size", "latent_height", "latent_width", "num_frames",
                 "time_compressed_rate")
MODEL_VALUE_RULES = {
    "scale_factor": _POSITIVE_NUMBER,
    **{f"network_config.params.{key}": _POSITIVE_INT for key in _NETWORK_INTS},
    "network_config.params.spatial_interpolation": _POSITIVE_NUMBER,
    "network_config.params.temporal_interpolation": _POSITIVE_NUMBER,
    "network_config.params.elementwise_affine": _FLAG,
    "network_config.params.rotary_position_embedding": _FLAG,
    "name": _TEXT,
    "conditioner_config.params.model_dir": _PATH_TEXT,
    "conditioner_config.params.max_length": _POSITIVE_INT,
    "first_stage_config.ckpt_path": _PATH_TEXT,
    **{f"first_stage_config.params.{key}": _POSITIVE_INT
       for key in ("ch", "num_res_blocks", "z_channels", "temporal_compress_times")},
    "first_stage_config.params.ch_mult": _POSITIVE_INTS,
    "sampler_config.params.num_steps": _STEP_COUNT,
    "sampler_config.params.cfg_num_steps": _STEP_COUNT,
    "sampler_config.params.shift_scale": _POSITIVE_NUMBER,
    "sampler_config.params.cfg_scale": _NUMBER_AT_LEAST_0,
    # the dynamic CFG raises the negative base (num_steps - t) / cfg_num_steps to this power
    "sampler_config.params.cfg_exp": _WHOLE_NUMBER,
}
TINY_T5_KEYS = ("d_model", "d_ff", "num_layers", "num_heads", "d_kv")


def check_model_value(key: str, value, label: str | None = None, rule: tuple | None = None) -> None:
    """`value` for `model.<key>` follows `rule` (by default its rule in MODEL_VALUE_RULES); the error names `label`
    (e.g. the file and field of a diffusers folder the value was read from) or `model.<key>`."""
    description, accepts = rule or MODEL_VALUE_RULES[key]
    if label is None:
        _require(value is not None, f"model.{key} is missing; the base configs define it (configs/cogvideox_2b.yaml)")
    _require(accepts(value), f"{label or 'model.' + key} must be {description}, got {value!r} ({type(value).__name__})")


def _model_value(model: DictConfig, key: str):
    try:
        return OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(model, key, throw_on_missing=True)}),
                                      resolve=True)["v"]
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve model.{key}: {first_line(error)}") from error


def _require_equal(first: tuple, second: tuple, why: str) -> None:
    (name_a, value_a), (name_b, value_b) = first, second
    _require(value_a == value_b, f"{name_a} ({value_a}) must equal {name_b} ({value_b}): {why}")


def validate_model(cfg: DictConfig, origins: Mapping[str, str] | None = None) -> None:
    """Check the `model` values a run uses (types, ranges) and their consistency with each other and `args`.

    `origins` names where values came from that the config files did not give (dotted key -> "<file>: <field>" of a
    diffusers folder, see `weights.resolve_model`); an error about such a value names that place.
    Raises ConfigError on the first problem, before any model is built.
    """
    model, origins = cfg.model, origins or {}
    rules = dict(MODEL_VALUE_RULES)
    if "tiny_t5" in model:
        rules.update({f"tiny_t5.{key}": _POSITIVE_INT for key in TINY_T5_KEYS})
    for key, rule in rules.items():
        check_model_value(key, _model_value(model, key), origins.get(key), rule)
    net = model.network_config.params

    def name(key):
        return origins.get(key, f"model.{key}")

    def named(key):
        return name(key), OmegaConf.select(model, key)

    network = "network_config.params"
    for side in ("latent_height", "latent_width"):
        _require(net[side] % net.patch_size == 0, f"{name(f'{network}.{side}')} ({net[side]}) must be a multiple of "
                                                  f"{name(f'{network}.patch_size')} ({net.patch_size})")
    _require(net.hidden_size % net.num_attention_heads == 0,
             f"{name(f'{network}.hidden_size')} ({net.hidden_size}) must be a multiple of "
             f"{name(f'{network}.num_attention_heads')} ({net.num_attention_heads})")
    _require((net.num_frames - 1) % net.time_compressed_rate == 0,
             f"{name(f'{network}.num_frames')} ({net.num_frames}) must be 1 + a multiple of "
             f"{name(f'{network}.time_compressed_rate')} ({net.time_compressed_rate})")
    channels = "the latent noise, the DiT and the VAE share one channel count"
    _require_equal(("args.latent_channels", cfg.args.latent_channels), named("network_config.params.in_channels"),
                   channels)
    _require_equal(named("network_config.params.out_channels"), named("network_config.params.in_channels"), channels)
    _require_equal(named("first_stage_config.params.z_channels"), named("network_config.params.in_channels"), channels)
    _require_equal(named("first_stage_config.params.temporal_compress_times"),
                   named("network_config.params.time_compressed_rate"), "the VAE sets the temporal compression")
    _require_equal(named("conditioner_config.params.max_length"), named("network_config.params.text_length"),
                   "the DiT takes the T5 context as its text tokens")
    if "tiny_t5" in model:
        _require_equal(named("tiny_t5.d_model"), named("network_config.params.text_hidden_size"),
                       "the DiT takes T5 features of this width")


def check_attention_backend(name: str, device: str, dtype, head_dim: int) -> None:
    """`args.attention_backend` names a backend that runs on `device` for this model's dtype and head size.

    Tried on a tiny attention call, so the answer is torch's own, before any model work.
    """
    from .attention.kernels import BACKENDS  # the attention package imports this module

    _require(name in BACKENDS, f"args.attention_backend must be one of {', '.join(BACKENDS)}, got '{name}'")
    if BACKENDS[name] is None:
        return
    import torch
    from torch.nn.attention import sdpa_kernel

    q = torch.zeros(1, 1, 8, head_dim, dtype=dtype, device=device)
    try:
        with sdpa_kernel(BACKENDS[name]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError:
        raise ConfigError(f"args.attention_backend = {name} cannot run on {device} in {str(dtype).removeprefix('torch.')} "
                          f"with head size {head_dim}; use auto (or math)") from None


def check_dtype_on_device(dtype, device: str) -> None:
    """bfloat16 (5B's default) needs a GPU of compute capability 8.0 or later (A100, H100, RTX 30xx on): V100 and T4
    have no bfloat16 matrix or attention kernels."""
    import torch

    if str(device).startswith("cuda") and dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) < (8, 0):
        raise ConfigError(f"args.bf16 is True but {torch.cuda.get_device_name(device)} ({device}) has no bfloat16 "
                          "kernels; run in float16: args.bf16=False args.fp16=True")


def announce_float16_on_the_cpu(args, device: str) -> None:
    """A note when float16 (args.fp16, 2B's default) computes on the CPU: most CPUs have no float16 arithmetic and
    emulate it, many times slower than float32 (the tiny config sets fp16: False for this reason)."""
    if args.fp16 and device == "cpu":
        say("note: args.fp16 is True but the run computes on the CPU, where float16 is emulated on most CPUs and runs "
            "many times slower than float32; args.fp16=False computes in float32")


FULL_SIZE_PARAMETERS = 10**8  # a DiT this large takes hours per video on a CPU (2B: 1.3e9, 5B: 4.8e9; tiny: 1.5e6)


def is_full_size(network: Mapping) -> bool:
    """Whether the DiT `network` (model.network_config.params) is a full-size model: its parameters, about
    12 width² per layer (attention 4, MLP 8), reach FULL_SIZE_PARAMETERS."""
    return 12 * network["num_layers"] * network["hidden_size"] ** 2 >= FULL_SIZE_PARAMETERS


def resolve_device(name: str, full_size: bool = False) -> str:
    """The torch device for `args.device`: 'auto' is cuda when available, else cpu; a CUDA index must name a device.

    For a `full_size` model (hours per video on a CPU) 'auto' without CUDA is refused: args.device=cpu asks for it.
    """
    import torch  # here, so that --help and config errors never wait for torch

    cuda_available = torch.cuda.is_available()
    if name == "auto":
        _require(cuda_available or not full_size,
                 "args.device is auto but no CUDA device was found, and a full-size model takes hours per video on "
                 "the CPU; args.device=cpu runs it on the CPU anyway (--tiny runs the tiny model)")
        return "cuda" if cuda_available else "cpu"
    _require(
        cuda_available or not name.startswith("cuda"),
        f"args.device is '{name}' but CUDA is not available; use auto or cpu",
    )
    if name.startswith("cuda:"):
        count = torch.cuda.device_count()
        _require(int(name.removeprefix("cuda:")) < count,
                 f"args.device is '{name}' but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return name


def expand_prompts(args: Mapping) -> list[str]:
    """The prompt of every scene: the single prompt repeated when `single_prompt_length` > 0.

    `args` must have passed `validate_args` (load_config does this).
    """
    prompts = list(args["prompts"])
    return prompts * args["single_prompt_length"] if args["single_prompt_length"] > 0 else prompts


def _claim_folder(folder: str, key: str) -> None:
    """Create `folder`, prove it writable and, inside an `OutputRun`, lock it for this run (`key` names it)."""
    try:
        make_folders(folder)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe"):
            pass
        if OutputRun.active is not None:
            OutputRun.active.claim(folder, key)
    except OSError as error:
        raise ConfigError(f"{key} '{folder}' is not writable: {error.strerror}") from error


def prepare_output_dir(output_dir: str, planned_files: Iterable[str], other_dirs: Iterable[str] = ()) -> list[str]:
    """Create `output_dir` (and `other_dirs`, e.g. mask_save_dir), prove them writable, lock them for the run
    (see `output_files.OutputRun`), and return the planned files that already exist.

    `planned_files` are paths relative to `output_dir` (params.yaml excluded: see
    `write_resolved_config`). A folder another run uses raises `output_files.FolderInUseError`.
    """
    _claim_folder(output_dir, "args.output_dir")
    for folder in other_dirs:
        _claim_folder(folder, "args.mask_save_dir")
    planned_paths = (os.path.join(output_dir, name) for name in planned_files)
    return [path for path in planned_paths if os.path.exists(path)]


def announce_overwrites(paths: Iterable[str]) -> None:
    """Print one line for each existing file a run is about to replace."""
    for path in paths:
        say(f"overwriting existing {path}")


MAPS_FOLDER = "attn_map"  # masks and attention maps (mask-guided, visualisation): shared by the runs of a folder


def mask_folder(args, output_dir: str) -> str:
    """Where mask-guided saves its masks: `mask_save_dir` when set, else `<output_dir>/attn_map` (where the original
    always put them)."""
    return args.mask_save_dir or os.path.join(output_dir, MAPS_FOLDER)


def announce_other_runs_files(output_dir: str, files) -> None:
    """Print a note naming `files` (absolute), what earlier runs left in the run's folders and this run did not
    replace (another controller's video, the masks of steps this run does not have, …): params.yaml describes this
    run's files only. Files inside `output_dir` are named relative to it."""
    if files:
        output_dir = os.path.abspath(output_dir)
        names = [os.path.relpath(path, output_dir) if os.path.commonpath([output_dir, path]) == output_dir else path
                 for path in files]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        say(f"note: the run's folders also hold what earlier runs wrote and this run left as it was ({shown}); "
            f"{os.path.join(output_dir, PARAMS_FILE)} describes this run's files only")


def write_resolved_config(cfg: DictConfig, output_dir: str) -> str:
    """Write the whole resolved config to `output_dir/params.yaml`; return that path.

    `output_dir` must exist (see `prepare_output_dir`). The file is a valid config file:
    `load_config([path])` gives back an equal config. Inside an `OutputRun` it takes its name after
    the run's other outputs, when the run ends, so it always describes the files next to it.
    """
    path = os.path.join(output_dir, PARAMS_FILE)
    if os.path.exists(path):
        announce_overwrites([path])
    return write_text(path, OmegaConf.to_yaml(cfg, resolve=True), last=True)


def tiny_config_for(base_paths: Sequence[str]) -> str:
    """The tiny overlay of the model the base files describe (their `model.tiny_config`, in configs/)."""
    names = [_read_yaml(path).get("model", {}).get("tiny_config") for path in base_paths]
    names = [name for name in names if name]
    return os.path.join(CONFIG_DIR, names[-1]) if names else TINY_MODEL_CONFIG


class _GivenOnce(argparse.Action):
    """Store the option's value; the option given a second time is an error (argparse would keep the last alone)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = vars(namespace).setdefault("given_options", set())
        if self.dest in given:
            parser.error(f"{option_string} given twice: the second would replace the first; give it once")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="DiTCtrl run configuration.",
        epilog="Overrides are dotted keys such as args.seed=3 or model.scale_factor=1.0; "
        "place them before the options or after '--'.",
    )
    parser.add_argument("--base", nargs="+", default=[MODEL_CONFIG], metavar="YAML", action=_GivenOnce,
                        help="base config files, merged left to right over configs/inference.yaml")
    parser.add_argument("--custom-config", metavar="CASE_YAML", action=_GivenOnce,
                        help="case file merged over the base files")
    parser.add_argument("--tiny", action="store_true",
                        help="append the model's tiny config (its model.tiny_config) to the base files (smoke runs)")
    parser.add_argument("--prompts", nargs="+", metavar="PROMPT", action=_GivenOnce,
                        help="prompts, one argument each; replace args.prompts")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, applied last")
    return parser


def parse_cli(argv: Sequence[str] | None = None) -> DictConfig:
    """Parse the command line and return the resolved, checked config."""
    return parse_run_cli(argv)[0]


def parse_run_cli(argv: Sequence[str] | None = None) -> tuple[DictConfig, bool, DictConfig]:
    """The resolved, checked config, whether --tiny was given (the only trigger for writing random weights) and the
    `model` settings the case file and the overrides asked for (a diffusers folder must not silently replace them)."""
    options = build_parser().parse_args(argv)
    base_paths = [*options.base, *([tiny_config_for(options.base)] if options.tiny else [])]
    overrides = list(options.overrides)
    if options.prompts:
        for prompt in options.prompts:
            _require(not _OVERRIDE_PATTERN.match(prompt),
                     f"'{prompt}' after --prompts would be taken as a prompt; put overrides before --prompts")
        # JSON is valid YAML flow syntax, so each prompt survives commas, colons and quotes (kept as UTF-8:
        # YAML refuses the surrogate pairs json.dumps would write for emoji).
        overrides.append(f"args.prompts={json.dumps(options.prompts, ensure_ascii=False)}")
    cfg, requested = _load(base_paths, options.custom_config, overrides, True)
    return cfg, options.tiny, requested
