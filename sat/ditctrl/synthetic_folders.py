"""Where the random-weight writer (`synthetic_checkpoint.py`) may write, which parts it has to write, and
`ensure_synthetic_checkpoints`, the --tiny runs' entry to it; without torch, so a refused folder is one line at once.

The writer only ever writes into its own folders: a new or empty folder, which it marks with
``.ditctrl-synthetic``, or one that carries that mark. A folder holding anything else may be a real
checkpoint and is refused before anything is written. A new folder is made under ``sat/`` (any depth) or
inside an existing folder, never together with missing folders above it elsewhere (a mistyped path such as
``/nonexistent/dir`` is refused, not created).
"""
import os

from .checkpoints import MissingCheckpointError, check_t5_folder
from .console import say
from .output_files import write_text
from .weights import SAT_DIR, weight_paths

SYNTHETIC_MARK = ".ditctrl-synthetic"
PARTS = ("transformer", "vae", "t5")


class NotSyntheticFolderError(ValueError):
    """The writer was pointed at a folder it must not write into: one holding files it did not write (perhaps a
    real checkpoint), or a new one outside sat/ whose parent folder does not exist."""


def _may_create(folder: str) -> bool:
    """A missing `folder` may be made: it is under sat/ or its parent folder exists."""
    folder = os.path.abspath(folder)
    return os.path.isdir(os.path.dirname(folder)) or os.path.commonpath([folder, SAT_DIR]) == SAT_DIR


def _refusal(folder: str, missing=()) -> str | None:
    """Why the writer must not write into `folder` (see the module docstring), naming the `missing` files it was to
    write there; None when it may."""
    if not os.path.isdir(folder):
        if _may_create(folder):
            return None
        return (f"refusing to write random weights into {folder}: {os.path.dirname(os.path.abspath(folder))} does not "
                "exist (outside sat/ the synthetic writer only makes a folder inside an existing one); check the path")
    foreign = sorted(os.listdir(folder))
    if os.path.isfile(os.path.join(folder, SYNTHETIC_MARK)) or not foreign:
        return None
    lacks = f"{folder} lacks {', '.join(os.path.basename(path) for path in missing)}; " if missing else ""
    return (f"{lacks}refusing to write random weights into {folder}: it holds files the synthetic writer did not "
            f"write ({', '.join(foreign[:3])}), perhaps a real checkpoint; "
            + ("complete it (README.md, 'Download the weights') or " if missing else "")
            + "point the config at a new or empty folder")


def claim_folders(folders, missing=None) -> None:
    """Claim every folder of `folders`, or none: all are checked before the first is made or marked, so a refusal
    leaves nothing behind. `missing`: folder -> the files the writer was to write there, for the refusal."""
    for folder in folders:
        refusal = _refusal(folder, (missing or {}).get(folder, ()))
        if refusal:
            raise NotSyntheticFolderError(refusal)
    for folder in folders:
        write_text(os.path.join(folder, SYNTHETIC_MARK), "random-weight checkpoints of sat/make_synthetic_checkpoint.py\n")


def part_folders(paths: dict) -> dict:
    """The folder each part writes into: the transformer and T5 folders, the VAE file's folder."""
    return {"transformer": paths["transformer"], "vae": os.path.dirname(paths["vae"]), "t5": paths["t5"]}


def claim_part_folders(paths: dict, parts, missing: dict | None = None) -> None:
    """Claim the folders of `parts` (see `claim_folders`), a diffusers folder as a whole, before any weights are
    written; `missing` (part -> its missing files, from `missing_parts`) names them in a refusal."""
    if paths["layout"] == "diffusers":
        claim_folders([paths["root"]])
        return
    folders = part_folders(paths)
    claim_folders([folders[part] for part in parts],
                  {folders[part]: files for part, files in (missing or {}).items()})


def missing_parts(cfg) -> dict:
    """The parts whose checkpoint is not on disk (`latest`, the VAE file, a complete T5 folder), each with its missing
    files; none of a diffusers folder, which is recognised only once complete (its model_index.json is written
    last)."""
    paths = weight_paths(cfg)
    if paths["layout"] == "diffusers":
        return {}
    missing = {"transformer": [os.path.join(paths["transformer"], "latest")], "vae": [paths["vae"]]}
    missing = {part: [path for path in files if not os.path.isfile(path)] for part, files in missing.items()}
    try:
        check_t5_folder(paths["t5"], paths["tokenizer"])
        missing["t5"] = []
    except MissingCheckpointError as error:
        missing["t5"] = list(error.paths)
    return {part: missing[part] for part in PARTS if missing[part]}


def ensure_synthetic_checkpoints(cfg, device: str = "cpu") -> None:
    """Write the random-weight checkpoints `cfg` expects that are missing; those on disk are reused, never rewritten.

    Their folders are claimed first, so a folder the writer must not touch is refused before torch loads.
    """
    parts = missing_parts(cfg)
    if parts:
        paths = weight_paths(cfg)
        claim_part_folders(paths, parts, missing=parts)
        from .synthetic_checkpoint import write_synthetic_checkpoints  # torch and SAT: only when there is work
        say(f"writing random-weight checkpoints ({', '.join(parts)}) to "
            f"{', '.join(part_folders(paths)[part] for part in parts)} (once; later runs reuse them)")
        write_synthetic_checkpoints(cfg, device, parts=parts)
