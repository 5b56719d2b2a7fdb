"""Readers for the CogVideoX-2B files a user downloads (cogvideox.md section 1).

* ``transformer/latest`` + ``transformer/<iter>/mp_rank_00_model_states.pt``: the DiT (1.2-1.4);
* ``vae/3d-vae.pt``: the VAE (1.5);
* ``t5-v1_1-xxl/``: a Hugging Face T5 encoder folder (1.6), checked here and loaded by ``text_encoder``.

Files are loaded with ``torch.load(weights_only=True)``. A file that holds other pickled objects
(DeepSpeed writes ``args`` and the like next to the weights) is refused by that mode; it is then
loaded again with ``weights_only=False`` and a warning. That executes the file's pickle code, so it
is only safe for files from a source the user trusts (the official download).
"""
import json
import os
import pickle
import warnings

import torch

DIT_PREFIX = "model.diffusion_model."
POSITION_TABLE_KEY = "mixins.pos_embed.pos_embedding"
# Stray tensors some SAT files carry; the DiT either lacks them or recomputes them (spec 1.3).
AUXILIARY_DIT_KEYS = frozenset({
    "transformer.word_embeddings.weight",
    "transformer.position_embeddings.weight",
    "transformer.embed_tokens.weight",
    "mixins.pos_embed.freqs_sin",
    "mixins.pos_embed.freqs_cos",
    POSITION_TABLE_KEY,
})
DIT_WRAPPER_KEYS = ("module", "model", "state_dict")
DIT_FILE_NAME = "mp_rank_00_model_states.pt"
VAE_TRAINING_PREFIX = "loss."
T5_INDEX_NAME = "model.safetensors.index.json"
T5_SINGLE_WEIGHTS_NAME = "model.safetensors"


class MissingCheckpointError(FileNotFoundError):
    """A checkpoint file or folder the run needs is not on disk."""

    def __init__(self, *paths):
        self.paths = paths
        super().__init__(
            f"missing checkpoint {', '.join(map(str, paths))}; see README.md, section "
            "'Download CogVideoX-2B weights', or run with --tiny. In short: unzip the SAT transformer and "
            "vae archives (cloud.tsinghua.edu.cn, links in the README) into sat/CogVideoX-2b-sat/, and put "
            "text_encoder/* + tokenizer/* of huggingface.co/THUDM/CogVideoX-2b into sat/CogVideoX-2b-sat/t5-v1_1-xxl/"
        )


def _require(path, is_dir=False):
    exists = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not exists:
        raise MissingCheckpointError(path)


def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        warnings.warn(
            f"{path} holds pickled objects besides tensors; loading it with weights_only=False, "
            "which is only safe for a file from a trusted source"
        )
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _unwrap(checkpoint, path, wrapper_keys):
    if isinstance(checkpoint, dict):
        for key in wrapper_keys:
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
    found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(f"{path}: expected the weights under one of {list(wrapper_keys)}, found {found}")


def read_latest_iteration(folder):
    """The sub-folder name that ``<folder>/latest`` points at: an integer > 0 as text, or 'release'."""
    latest_path = os.path.join(folder, "latest")
    _require(latest_path)
    with open(latest_path) as f:
        text = f.read().strip()
    if text == "release":
        return text
    if text.isdigit() and int(text) > 0:
        return str(int(text))
    raise ValueError(f"{latest_path}: expected an integer > 0 or 'release', found {text!r}")


def read_transformer_state_dict(folder):
    """DiT weights from a SAT ``transformer`` folder, keyed as in a bare ``DiffusionTransformer``.

    If any key carries the prefix ``model.diffusion_model.``, only those keys are kept (prefix
    stripped), as SAT's ``load_checkpoint`` does; a file without the prefix is taken as it is.
    The auxiliary keys of spec 1.3 are dropped.
    """
    _require(folder, is_dir=True)
    path = os.path.join(folder, read_latest_iteration(folder), DIT_FILE_NAME)
    _require(path)
    weights = _unwrap(_torch_load(path), path, DIT_WRAPPER_KEYS)
    if any(key.startswith(DIT_PREFIX) for key in weights):
        weights = {key[len(DIT_PREFIX):]: value for key, value in weights.items() if key.startswith(DIT_PREFIX)}
    return {key: value for key, value in weights.items() if key not in AUXILIARY_DIT_KEYS}


def read_vae_state_dict(path):
    """VAE weights (``encoder.*``, ``decoder.*``) from ``3d-vae.pt``, without the training-only ``loss.*``."""
    _require(path)
    weights = _unwrap(_torch_load(path), path, ("state_dict",))
    return {key: value for key, value in weights.items() if not key.startswith(VAE_TRAINING_PREFIX)}


def _first(keys, count=5):
    return ", ".join(keys[:count])


def load_state_dict_strict(module, state_dict, what, ignore=()):
    """Copy ``state_dict`` into ``module``; every key must match in name and shape.

    Keys in ``ignore`` may be absent from ``state_dict`` (e.g. a recomputed fixed table); when present
    they are loaded like any other. Values are converted to the dtype and device of the module's tensors.
    """
    targets = module.state_dict()
    missing = [key for key in targets if key not in state_dict and key not in ignore]
    unexpected = [key for key in state_dict if key not in targets]
    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(targets[key].shape)}"
        for key, value in state_dict.items()
        if key in targets and value.shape != targets[key].shape
    ]
    problems = [
        f"{len(found)} {kind} ({_first(found)})"
        for kind, found in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches, file vs model", mismatched))
        if found
    ]
    if problems:
        raise ValueError(f"{what} checkpoint does not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in state_dict.items():
            targets[key].copy_(value)


def _t5_weight_files(folder):
    """The weight files a T5 folder's index names, or the single-file name when there is no index."""
    index_path = os.path.join(folder, T5_INDEX_NAME)
    if not os.path.isfile(index_path):
        return [T5_SINGLE_WEIGHTS_NAME]
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as error:
        raise ValueError(f"{index_path}: not a safetensors index with a 'weight_map' ({error})") from error


def check_t5_folder(folder):
    """Raise ``MissingCheckpointError`` naming every file a T5 encoder folder lacks."""
    _require(folder, is_dir=True)
    needed = ["config.json", "spiece.model", *_t5_weight_files(folder)]
    missing = [os.path.join(folder, name) for name in needed if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise MissingCheckpointError(*missing)
