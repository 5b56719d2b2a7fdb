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
    written; `missing` (part -> its missing files, from `synthetic_folders.missing_parts`) names them in a refusal."""
    if paths["layout"] == "diffusers":
        claim_folders([paths["root"]])
        return
    folders = part_folders(paths)
    claim_folders([folders[part] for part in parts],
                  {folders[part]: files for part, files in (missing or {}).items()})
