"""Where a run's weights are, in which layout, and whether all their files are there, without torch, SAT or
transformers: a missing download is reported at once. Their tensor names and shapes: `weight_shapes.py`.

`args.load` names either a diffusers folder (`model_index.json`: every part inside, e.g. the
`hf download THUDM/CogVideoX-2b` folder) or a SAT transformer folder (`latest`; the VAE
and T5 then come from `model.first_stage_config.ckpt_path` and the conditioner's `model_dir`).
Relative paths are resolved from the `sat/` folder; a leading `~` is the user's home folder.
"""
import os

from omegaconf import OmegaConf

from .checkpoints import (OLD_HUB_CLI, MissingCheckpointError, StateDictSource, check_t5_folder, download_command,
                          read_transformer_state_dict, read_vae_state_dict, tokenizer_file, transformer_file)
from .config import check_model_value
from .diffusers_layout import TRANSFORMER_NAMES, VAE_NAMES, DiffusersSource, NameMap, detect_layout, read_model_configs

SAT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def weight_path(path: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(SAT_DIR, path)


def weight_paths(cfg, layout: str | None = None) -> dict:
    """The run's weight locations (absolute) and `layout`: detected from `args.load` unless given.

    A folder that is not there (yet) counts as the SAT layout; `check_weight_files` reports it.
    """
    load = weight_path(cfg.args.load)
    layout = layout or detect_layout(load) or "sat"
    if layout == "diffusers":
        return {"layout": layout, "root": load, "transformer": os.path.join(load, "transformer"),
                "vae": os.path.join(load, "vae"), "t5": os.path.join(load, "text_encoder"),
                "tokenizer": os.path.join(load, "tokenizer")}
    t5 = weight_path(cfg.model.conditioner_config.params.model_dir)
    return {"layout": layout, "root": load, "transformer": load,
            "vae": weight_path(cfg.model.first_stage_config.ckpt_path), "t5": t5, "tokenizer": t5}


def transformer_source(paths: dict):
    """The DiT's tensors under our names: lazily from diffusers safetensors, or the SAT file's state dict."""
    if paths["layout"] == "diffusers":
        return DiffusersSource(paths["transformer"], NameMap(TRANSFORMER_NAMES))
    return StateDictSource(read_transformer_state_dict(paths["transformer"]), transformer_file(paths["transformer"]))


def vae_source(paths: dict, vae_params: dict):
    if paths["layout"] == "diffusers":
        return DiffusersSource(paths["vae"], NameMap(VAE_NAMES, levels=len(vae_params["ch_mult"])))
    return StateDictSource(read_vae_state_dict(paths["vae"]), paths["vae"])


def _require_files(paths: dict, model_name: str) -> None:
    """One MissingCheckpointError naming every missing file or folder."""
    if paths["layout"] == "sat":
        needed = [os.path.join(paths["transformer"], "latest"), paths["vae"]]
    else:
        needed = [os.path.join(paths[part], name) for part, name in
                  (("transformer", "config.json"), ("vae", "config.json"))]
        needed.append(os.path.join(paths["root"], "scheduler", "scheduler_config.json"))
    missing = [path for path in needed if not os.path.isfile(path)]
    try:
        check_t5_folder(paths["t5"], paths["tokenizer"])
    except MissingCheckpointError as error:
        missing.extend(error.paths)
    if missing:
        raise MissingCheckpointError(*missing, model_name=model_name)


def check_weight_files(cfg) -> dict:
    """Check that every weight file of the run is there; return `weight_paths(cfg)`.

    One error names every missing path and the download of the configured model (`model.name`). Reads folder
    listings only; `resolve_model` has taken a diffusers folder's model shape into the config before (see
    docs/weights.md, "What comes from where").
    """
    load, model_name = weight_path(cfg.args.load), cfg.model.name
    if not os.path.isdir(load):
        raise MissingCheckpointError(load, model_name=model_name)
    if detect_layout(load) is None:
        raise ValueError(f"{load} is neither a diffusers folder (model_index.json, e.g. from "
                         f"{download_command(model_name)}) nor a SAT transformer folder (latest + <iteration>/)")
    paths = weight_paths(cfg)
    _require_files(paths, model_name)
    return paths


# `model` keys a diffusers folder makes unused: it brings its own VAE and T5 (vae/, text_encoder/, tokenizer/).
SAT_LAYOUT_ONLY = ("first_stage_config.ckpt_path", "conditioner_config.params.model_dir")


def resolve_model(cfg, requested=None) -> tuple:
    """The run's config with the model a diffusers folder at `args.load` fixes (its shape, T5 context, VAE scale
    factor and SNR shift; see README: what comes from where), and where each of those values came from
    (dotted key -> "<file>: <field>", for `config.validate_model` to name); for a SAT folder `cfg` as it is.

    `requested`: the `model` settings the case file and the overrides gave; one the folder replaces with another
    value, or makes unused (SAT_LAYOUT_ONLY), is refused: it would be silently ignored. Reads JSON configs only.
    """
    load = weight_path(cfg.args.load)
    if not os.path.isdir(load) or detect_layout(load) != "diffusers":
        return cfg, {}
    paths = weight_paths(cfg)
    _require_files(paths, cfg.model.name)
    folder = read_model_configs(paths["root"])
    _require_same_family(cfg.model, folder, paths["root"])
    for key in [*folder.values, *SAT_LAYOUT_ONLY]:
        asked = None if requested is None else OmegaConf.select(requested, key)
        if asked is None:
            continue
        if key in SAT_LAYOUT_ONLY:
            raise ValueError(f"model.{key} = {asked} (case file or command line) has no effect: the diffusers folder "
                             f"{paths['root']} brings its own VAE and T5; remove the setting")
        if asked != folder.values[key]:
            raise ValueError(f"model.{key} = {asked} (case file or command line) has no effect: the diffusers folder "
                             f"sets it ({folder.origins[key]} = {folder.values[key]!r}); remove the setting")
    fixed = OmegaConf.create()
    for key, value in folder.values.items():
        OmegaConf.update(fixed, key, value, force_add=True)
    return OmegaConf.merge(cfg, {"model": fixed}), folder.origins


def _require_same_family(model, folder, root: str) -> None:
    """A diffusers folder gives the model's shape, but the run's other defaults (dtype, controlled layers) come from
    --model: a folder of the other family (rotary position embedding or not: 5B or 2B) is refused."""
    key = "network_config.params.rotary_position_embedding"
    rotary = folder.values[key]
    check_model_value(key, rotary, folder.origins[key])
    if rotary != model.network_config.params.rotary_position_embedding:
        family, option = ("CogVideoX-5B", "5b") if rotary else ("CogVideoX-2B", "2b")
        raise ValueError(f"{root} holds a {family}-type model (rotary position embedding: {rotary}) but the run is "
                         f"configured for {model.name}; run with --model {option}")


def find_tokenizer(cfg, path: str | None = None) -> str:
    """The folder of the T5 tokenizer (spiece.model or tokenizer.json); the tokenizer alone is enough.

    `path` (show_tokens' --tokenizer) is a tokenizer folder, a diffusers folder holding tokenizer/, or a
    spiece.model file. Without it: the configured model's, in either layout: `<args.load>/tokenizer` (a diffusers
    folder, or the tokenizer alone from `hf download THUDM/<model> --include "tokenizer/*"`), else the SAT
    layout's T5 folder (`model.conditioner_config.params.model_dir`). A FileNotFoundError names where it looked
    and the tokenizer's download.
    """
    if path is not None:
        path = os.path.expanduser(path)
        if os.path.isfile(path):
            folders = [os.path.dirname(path)] if os.path.basename(path) in ("spiece.model", "tokenizer.json") else []
        else:
            folders = [os.path.join(path, "tokenizer"), path]
    else:
        folders = [os.path.join(weight_path(cfg.args.load), "tokenizer"),
                   weight_path(cfg.model.conditioner_config.params.model_dir)]
    for folder in folders:
        if os.path.isfile(tokenizer_file(folder)):
            return folder
    name = cfg.model.name
    raise FileNotFoundError(f"no T5 tokenizer (spiece.model) at {path or ' or '.join(folders)}; download it alone: "
                            f'{download_command(name, "tokenizer/*")} ({OLD_HUB_CLI})')
