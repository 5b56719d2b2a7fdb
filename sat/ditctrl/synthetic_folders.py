"""Which parts of the random-weight checkpoints a config expects are missing, and `ensure_synthetic_checkpoints`,
the --tiny runs' entry to the writer (`synthetic_checkpoint.py`); without torch until there is something to write,
so a refused folder (`synthetic_claims.py`) is one line at once.
"""
import os

from .checkpoints import MissingCheckpointError, check_t5_folder
from .console import say
from .synthetic_claims import PARTS, claim_part_folders, part_folders
from .weights import weight_paths


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
