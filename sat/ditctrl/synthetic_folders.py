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


def claim_synthetic_folder(folder: str) -> None:
    """Make `folder` the writer's own, or raise NotSyntheticFolderError (see the module docstring)."""
    if not os.path.isdir(folder) and not _may_create(folder):
        raise NotSyntheticFolderError(
            f"refusing to write random weights into {folder}: {os.path.dirname(os.path.abspath(folder))} does not "
            "exist (outside sat/ the synthetic writer only makes a folder inside an existing one); check the path")
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, SYNTHETIC_MARK)):
        foreign = sorted(os.listdir(folder))
        if foreign:
            raise NotSyntheticFolderError(
                f"refusing to write random weights into {folder}: it holds files the synthetic writer did not write "
                f"({', '.join(foreign[:3])}), perhaps a real checkpoint; point the config at a new or empty folder")
    write_text(os.path.join(folder, SYNTHETIC_MARK), "random-weight checkpoints of sat/make_synthetic_checkpoint.py\n")


def part_folders(paths: dict) -> dict:
    """The folder each part writes into: the transformer and T5 folders, the VAE file's folder."""
    return {"transformer": paths["transformer"], "vae": os.path.dirname(paths["vae"]), "t5": paths["t5"]}


def claim_part_folders(paths: dict, parts) -> None:
    """Claim the folders of `parts` (see `claim_synthetic_folder`), a diffusers folder as a whole, before any
    weights are written."""
    if paths["layout"] == "diffusers":
        claim_synthetic_folder(paths["root"])
        return
    folders = part_folders(paths)
    for part in parts:
        claim_synthetic_folder(folders[part])


def missing_parts(cfg) -> list:
    """The parts whose checkpoint is not on disk (`latest`, the VAE file, a complete T5 folder); none of a
    diffusers folder, which is recognised only once complete (its model_index.json is written last)."""
    paths = weight_paths(cfg)
    if paths["layout"] == "diffusers":
        return []
    present = {
        "transformer": os.path.isfile(os.path.join(paths["transformer"], "latest")),
        "vae": os.path.isfile(paths["vae"]),
    }
    try:
        check_t5_folder(paths["t5"], paths["tokenizer"])
        present["t5"] = True
    except MissingCheckpointError:
        present["t5"] = False
    return [part for part in PARTS if not present[part]]


def ensure_synthetic_checkpoints(cfg, device: str = "cpu") -> None:
    """Write the random-weight checkpoints `cfg` expects that are missing; those on disk are reused, never rewritten.

    Their folders are claimed first, so a folder the writer must not touch is refused before torch loads.
    """
    parts = missing_parts(cfg)
    if parts:
        paths = weight_paths(cfg)
        claim_part_folders(paths, parts)
        from .synthetic_checkpoint import write_synthetic_checkpoints  # torch and SAT: only when there is work
        say(f"writing random-weight checkpoints ({', '.join(parts)}) to "
              f"{', '.join(part_folders(paths)[part] for part in parts)} (once; later runs reuse them)")
        write_synthetic_checkpoints(cfg, device, parts=parts)
