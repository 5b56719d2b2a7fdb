"""Strict readers for the CogVideoX files a user downloads (docs/weights.md, "SAT layout").

SAT layout:

* ``transformer/latest`` + ``transformer/<iter>/mp_rank_00_model_states.pt``: the DiT;
* ``vae/3d-vae.pt``: the VAE;
* ``t5-v1_1-xxl/``: a Hugging Face T5 encoder folder, checked here and loaded by ``text_encoder``.

The diffusers layout's safetensors folders are read by ``SafetensorsSource`` (their names are mapped
to ours by ``diffusers_layout``). Every reader is a tensor source: ``check_shapes`` compares its names
and shapes with a model's before anything is copied (one error naming the file), ``load_strict`` then
reads one tensor at a time straight into the model's dtype and device. A corrupt, truncated or empty
file is one error naming it.

Files are loaded with ``torch.load(weights_only=True)``. A file that holds other pickled objects
(DeepSpeed writes ``args`` and the like next to the weights) is refused by that mode; it is then
loaded again with ``weights_only=False`` and a warning. That executes the file's pickle code, so it
is only safe for files from a source the user trusts (the official download).

torch is imported only by the functions that read tensors, so the presence checks (``check_t5_folder``,
``MissingCheckpointError``) answer before it loads.
"""
import json
import os
import pickle
import warnings
import zipfile

from safetensors import SafetensorError, safe_open

from .output_files import first_line

DIT_PREFIX = "model.diffusion_model."
POSITION_TABLE_KEY = "mixins.pos_embed.pos_embedding"
# Stray tensors some SAT files carry; the DiT either lacks them or recomputes them (docs/weights.md, "SAT layout").
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
T5_SINGLE_WEIGHTS_NAME = "model.safetensors"
T5_INDEX_NAME = T5_SINGLE_WEIGHTS_NAME + ".index.json"
README_HINT = "see README.md, section 'Download the weights', or run with --tiny"


OLD_HUB_CLI = "huggingface_hub before 0.34: huggingface-cli download with the same arguments"


def download_command(model_name: str, *include: str) -> str:
    """The command that downloads `model_name` (the config's `model.name`) from Hugging Face into sat/, only the
    `include` patterns when given."""
    patterns = "".join(f' --include "{pattern}"' for pattern in include)
    return f"hf download THUDM/{model_name}{patterns} --local-dir sat/{model_name}"


def download_hint(model_name=None) -> str:
    """Where to get the weights; with `model_name` (the config's `model.name`, e.g. CogVideoX-5b) the download command."""
    if model_name is None:
        return README_HINT
    return f"{README_HINT}. In short: {download_command(model_name)} ({OLD_HUB_CLI})"


class MissingCheckpointError(FileNotFoundError):
    """A checkpoint file or folder the run needs is not on disk; `model_name` names the download that holds it."""

    def __init__(self, *paths, model_name=None):
        self.paths = paths
        super().__init__(f"missing checkpoint {', '.join(map(str, paths))}; {download_hint(model_name)}")


def _require(path, is_dir=False):
    exists = os.path.isdir(path) if is_dir else os.path.isfile(path)
    if not exists:
        raise MissingCheckpointError(path)


def _torch_load(path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        warnings.warn(
            f"{path} holds pickled objects besides tensors; loading it with weights_only=False, "
            "which is only safe for a file from a trusted source"
        )
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _require_nonempty(path):
    _require(path)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file (0 bytes); download it again")


def _read_torch_file(path):
    """The object in a torch checkpoint; an empty, truncated or non-torch file is one ValueError naming it."""
    _require_nonempty(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a complete torch checkpoint archive (truncated or corrupt); download it again")
    try:
        return _torch_load(path)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: unreadable torch checkpoint ({first_line(error)}); download it again") from None


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


def transformer_file(folder):
    """``<folder>/<latest>/mp_rank_00_model_states.pt``; ``latest`` naming no folder is an error naming both."""
    _require(folder, is_dir=True)
    iteration = read_latest_iteration(folder)
    if not os.path.isdir(os.path.join(folder, iteration)):
        raise ValueError(f"{os.path.join(folder, 'latest')} names the folder '{iteration}', "
                         f"but {os.path.join(folder, iteration)} does not exist")
    path = os.path.join(folder, iteration, DIT_FILE_NAME)
    _require(path)
    return path


def read_transformer_state_dict(folder):
    """DiT weights from a SAT ``transformer`` folder, keyed as in a bare ``DiffusionTransformer``.

    If any key carries the prefix ``model.diffusion_model.``, only those keys are kept (prefix
    stripped), as SAT's ``load_checkpoint`` does; a file without the prefix is taken as it is.
    The stray keys of ``AUXILIARY_DIT_KEYS`` are dropped.
    """
    path = transformer_file(folder)
    weights = _unwrap(_read_torch_file(path), path, DIT_WRAPPER_KEYS)
    if any(key.startswith(DIT_PREFIX) for key in weights):
        weights = {key[len(DIT_PREFIX):]: value for key, value in weights.items() if key.startswith(DIT_PREFIX)}
    return {key: value for key, value in weights.items() if key not in AUXILIARY_DIT_KEYS}


def read_wrapped_state_dict(path, wrapper_keys=("state_dict",)):
    """The weights in a torch checkpoint file under the first of `wrapper_keys` it holds; an unreadable file, or one
    without them, is one ValueError naming it."""
    return _unwrap(_read_torch_file(path), path, wrapper_keys)


def read_vae_state_dict(path):
    """VAE weights (``encoder.*``, ``decoder.*``) from ``3d-vae.pt``, without the training-only ``loss.*``."""
    weights = read_wrapped_state_dict(path)
    return {key: value for key, value in weights.items() if not key.startswith(VAE_TRAINING_PREFIX)}


class StateDictSource:
    """Tensors already in memory (a ``.pt`` file's state dict), under the model's names."""

    def __init__(self, state_dict, file=None):
        self.state_dict, self.location = state_dict, file

    def check(self, expected, what, ignore=()):
        found = {key: (tuple(value.shape), self.location) for key, value in self.state_dict.items()}
        check_shapes(expected, found, self.location, what, ignore)

    def has(self, name) -> bool:
        return name in self.state_dict

    def tensor(self, name, device, dtype):
        return self.state_dict[name].to(device=device, dtype=dtype)


def safetensors_shapes(path) -> dict:
    """name -> shape from a safetensors header (no tensor data is read); a broken file is one error naming it."""
    _require_nonempty(path)
    try:
        with safe_open(path, framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as error:
        raise ValueError(f"{path}: unreadable safetensors file ({first_line(error)}; truncated, corrupt or a "
                         "git-lfs pointer instead of the weights); download it again") from None


def _read_json(path) -> dict:
    """The JSON object (a mapping: every config and index file is one) in `path`; anything else is one error."""
    _require(path)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({first_line(error)})") from None
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or first_line(error)}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: holds a JSON {type(content).__name__}, not the object (mapping) of a config or "
                         "index file; download it again")
    return content


def shard_files(folder, weights_name):
    """(weight_map, shard file names) of `weights_name` in `folder`: from its `<weights_name>.index.json` when there
    is one (tensor name -> shard), else (None, [weights_name])."""
    index_path = os.path.join(folder, weights_name + ".index.json")
    if not os.path.isfile(index_path):
        return None, [weights_name]
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) and isinstance(shard, str)
                                                   for name, shard in weight_map.items()):
        raise ValueError(f"{index_path}: not a safetensors index with a 'weight_map' of tensor names to shard file "
                         "names")
    return weight_map, sorted(set(weight_map.values()))


class SafetensorsSource:
    """The tensors of one safetensors file or of a sharded set (``<name>.index.json`` + shards), read lazily."""

    def __init__(self, folder, weights_name):
        self.location = folder
        index_path = os.path.join(folder, weights_name + ".index.json")
        weight_map, shards = shard_files(folder, weights_name)
        missing = [os.path.join(folder, name) for name in shards if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise MissingCheckpointError(*missing)
        self.files = {}  # tensor name -> (shape, file)
        for shard in shards:
            path = os.path.join(folder, shard)
            self.files.update({name: (shape, path) for name, shape in safetensors_shapes(path).items()})
        for name, shard in (weight_map or {}).items():
            path = os.path.join(folder, shard)
            if name not in self.files or self.files[name][1] != path:
                raise ValueError(f"{index_path} puts {name} in {shard}, but that file does not hold it")
        self._open = {}

    def check(self, expected, what, ignore=()):
        check_shapes(expected, self.files, self.location, what, ignore)

    def has(self, name) -> bool:
        return name in self.files

    def tensor(self, name, device, dtype):
        """One tensor, read from its file straight onto `device`, then converted to `dtype`."""
        path = self.files[name][1]
        key = (path, str(device))
        if key not in self._open:
            self._open[key] = safe_open(path, framework="pt", device=str(device))
        return self._open[key].get_tensor(name).to(dtype)


def _listed(entries, count=5):
    return ", ".join(entries[:count])


def _where(files):
    files = sorted({str(file) for file in files if file})
    return f" in {', '.join(files)}" if files else ""


def check_shapes(expected, found, location, what, ignore=()):
    """Every name of `expected` (name -> shape) must be in `found` (name -> (shape, file)) with that shape,
    and nothing else. Names in `ignore` may be absent. One ValueError gives the counts and the first
    offenders with their files (`location`: where the missing ones were looked for).
    """
    missing = [key for key in expected if key not in found and key not in ignore]
    unexpected = [key for key in found if key not in expected]
    mismatched = [key for key, (shape, _) in found.items() if key in expected and shape != tuple(expected[key])]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listed(missing)}){_where([location])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})"
                        f"{_where(found[key][1] for key in unexpected[:5])}")
    if mismatched:
        shown = [f"{key} {found[key][0]} vs {tuple(expected[key])}" for key in mismatched]
        problems.append(f"{len(mismatched)} shape mismatches, file vs model ({_listed(shown)})"
                        f"{_where(found[key][1] for key in mismatched[:5])}")
    if problems:
        raise ValueError(f"{what} checkpoint does not fit the model: " + "; ".join(problems))


def model_shapes(module) -> dict:
    """name -> shape of every tensor in `module`'s state dict (works on the meta device)."""
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def load_strict(module, source, what, ignore=()):
    """Check `source` against `module`, then copy it in one tensor at a time.

    A source (or a plain state dict) has ``check(expected shapes, what, ignore)``, ``has(name)`` and
    ``tensor(name, device, dtype)``.
    Names in `ignore` may be absent from it (e.g. a recomputed fixed table); when present they are loaded
    like any other. Tensors are read in the dtype and on the device of the module's tensors.
    """
    import torch

    if isinstance(source, dict):
        source = StateDictSource(source)
    source.check(model_shapes(module), what, ignore)
    with torch.no_grad():
        for key, target in module.state_dict().items():
            if source.has(key):
                target.copy_(source.tensor(key, target.device, target.dtype))


def tokenizer_file(folder):
    """The T5 tokenizer's model: ``spiece.model`` (the download), or ``tokenizer.json`` (transformers 5 saves it)."""
    fast = os.path.join(folder, "tokenizer.json")
    return fast if os.path.isfile(fast) else os.path.join(folder, "spiece.model")


def check_t5_folder(folder, tokenizer_folder=None):
    """Raise ``MissingCheckpointError`` naming every file a T5 encoder folder (and its tokenizer folder) lacks."""
    tokenizer_folder = tokenizer_folder or folder
    _require(folder, is_dir=True)
    _require(tokenizer_folder, is_dir=True)
    needed = [os.path.join(folder, name) for name in ("config.json", *shard_files(folder, T5_SINGLE_WEIGHTS_NAME)[1])]
    needed.append(tokenizer_file(tokenizer_folder))
    missing = [path for path in needed if not os.path.isfile(path)]
    if missing:
        raise MissingCheckpointError(*missing)


def check_t5_weights(folder):
    """The T5 shards hold exactly the encoder that ``config.json`` describes (names and shapes, headers only)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    config_path = os.path.join(folder, "config.json")
    try:
        config = T5Config.from_dict(_read_json(config_path))
        with torch.device("meta"):
            encoder = T5EncoderModel(config)
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{config_path}: not a T5 encoder config ({first_line(error)})") from None
    expected = model_shapes(encoder)
    tied_aliases = set(expected) - {name for name, _ in encoder.named_parameters()} - {
        name for name, _ in encoder.named_buffers()}
    SafetensorsSource(folder, T5_SINGLE_WEIGHTS_NAME).check(expected, "T5", ignore=tied_aliases)
