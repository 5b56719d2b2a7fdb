"""Where the metric models' weights are: local folders and files only, checked before any model work.

CLIP: a folder holding a transformers CLIP checkpoint (config.json and its weights; for text similarity also its
tokenizer), or a Hugging Face id such as openai/clip-vit-base-patch32 that is already in the local Hugging Face
cache. AMT-S: the `amt-s.pth` file VBench uses. Nothing is ever downloaded here; a missing model is one line
naming it and the command that downloads it.
"""
import json
import os
import re

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_AMT_PATHS = (os.path.join(REPO_DIR, "checkpoints", "amt-s.pth"),
                     os.path.join("~", ".cache", "vbench", "amt_model", "amt-s.pth"))  # where VBench keeps it
AMT_DOWNLOAD = ("hf download lalala125/AMT amt-s.pth --local-dir checkpoints (the AMT-S weights VBench's motion "
                "smoothness uses)")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
CLIP_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
CLIP_TOKENIZERS = (("tokenizer.json",), ("vocab.json", "merges.txt"))


class MissingWeightsError(FileNotFoundError):
    """A metric model's weights are not on disk; the message names them and their download."""


def clip_download(name: str) -> str:
    hub_id = name if _HUB_ID.fullmatch(name) and not os.path.exists(name) else DEFAULT_CLIP
    return f"hf download {hub_id} (into the Hugging Face cache; or add --local-dir DIR and name DIR)"


def _cached_hub_folder(name: str) -> str | None:
    """The local snapshot folder of Hugging Face id `name`, if its config is in the cache (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    return os.path.dirname(config) if isinstance(config, str) else None


def read_clip_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as file:
            config = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable CLIP config ({error})") from None
    if config.get("model_type") not in ("clip", "clip_vision_model"):
        raise ValueError(f"{folder} is not a CLIP checkpoint (its config.json has model_type "
                         f"{config.get('model_type')!r}, expected 'clip')")
    return config


def clip_image_size(config: dict) -> int:
    """The input size the CLIP vision tower was trained for (its position embeddings' grid)."""
    return config.get("vision_config", config).get("image_size", 224)


def clip_folder(name: str, with_text: bool = False) -> str:
    """The local folder of CLIP weights `name` (a folder, or a Hugging Face id in the local cache).

    `with_text`: the text tower and the tokenizer are needed too (text similarity), not only the vision tower.
    """
    folder = os.path.expanduser(name)
    if not os.path.isdir(folder):
        folder = _cached_hub_folder(name) if _HUB_ID.fullmatch(name) else None
        if folder is None:
            raise MissingWeightsError(f"CLIP weights '{name}' are neither a folder nor in the local Hugging Face "
                                      f"cache; download them: {clip_download(name)}")
    config = read_clip_config(folder)
    missing = [] if any(os.path.isfile(os.path.join(folder, weights)) for weights in CLIP_WEIGHTS) else [
        f"its weights ({' or '.join(CLIP_WEIGHTS[:2])})"]
    if with_text:
        if config.get("model_type") != "clip":
            raise ValueError(f"{folder} holds a CLIP vision tower only; text similarity needs a whole CLIP model "
                             f"(e.g. {DEFAULT_CLIP})")
        if not any(all(os.path.isfile(os.path.join(folder, part)) for part in files) for files in CLIP_TOKENIZERS):
            missing.append("its tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    if missing:
        raise MissingWeightsError(f"the CLIP folder {folder} lacks {' and '.join(missing)}; download it again: "
                                  f"{clip_download(name)}")
    return folder


def amt_checkpoint(path: str | None) -> str:
    """The AMT-S checkpoint file: `path`, or the first default location that holds one."""
    candidates = [path] if path else DEFAULT_AMT_PATHS
    for candidate in candidates:
        if os.path.isfile(os.path.expanduser(candidate)):
            return os.path.expanduser(candidate)
    where = path or " or ".join(DEFAULT_AMT_PATHS)
    raise MissingWeightsError(f"AMT-S weights not found at {where}; download amt-s.pth: {AMT_DOWNLOAD}")
