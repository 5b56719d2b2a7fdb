"""The folders the random-weight writer (`synthetic_checkpoint.py`) owns, and the parts it writes; without torch,
so a refused folder is one line at once.

The writer only ever writes into its own folders: a new or empty folder, which it marks with
``.ditctrl-synthetic``, or one that carries that mark. A folder holding anything else may be a real
checkpoint and is refused before anything is written. A new folder is made under ``sat/`` (any depth) or
inside an existing folder, never together with missing folders above it elsewhere (a mistyped path such as
``/nonexistent/dir`` is refused, not created).
"""
import os

from .output_files import write_text
from .weights import SAT_DIR

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
