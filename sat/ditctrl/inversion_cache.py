"""`inversion.pt`: an inverted trajectory kept next to the outputs with the settings that made it, so that several
edits of one video invert it once.

    settings = InversionSettings(video=frames_digest(frames), frames=49, height=480, width=720, ...)
    trajectory = load_inversion(path, settings)        # None: missing, unreadable or made otherwise (one note)
    if trajectory is None:
        trajectory = invert_ddim(...)
        save_inversion(path, trajectory, settings)     # whole or not at all (output_files.write_file)

A cached trajectory is used only when every setting is equal and its shape is the one they describe; a file that
does not load (truncated, corrupt, another format) is never used. Nothing random enters an inversion (the
posterior mean of the VAE, deterministic DDIM), so the seed is not a setting.
"""
import hashlib
import os
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch

from .output_files import OutputCheckError, first_line, write_file

CACHE_NAME = "inversion.pt"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class InversionSettings:
    video: str              # frames_digest of the frames as the model sees them (resampled, cropped, cut)
    frames: int             # video frames (4k+1)
    height: int             # frame size in pixels
    width: int
    model: str              # model.name, e.g. CogVideoX-5b
    weights: str            # the transformer weights folder (args.load), absolute
    steps: int              # sampler steps
    shift_scale: float      # SNR shift of the schedule
    source_prompt: str
    guidance_scale: float
    dynamic_cfg: bool
    dtype: str              # run dtype of the DiT and the VAE, e.g. bfloat16

    def latent_shape(self) -> tuple[int, int, int]:
        """(latent frames, latent height, latent width) these settings invert."""
        return (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8


def frames_digest(frames: torch.Tensor) -> str:
    """sha256 of uint8 frames (F, H, W, 3), their shape included."""
    digest = hashlib.sha256(str(tuple(frames.shape)).encode())
    digest.update(frames.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_trajectory(trajectory, settings: InversionSettings) -> None:
    """Raise ValueError unless `trajectory` is the finite float32 (steps+1, 1, T, C, h, w) tensor `settings` make."""
    if not isinstance(trajectory, torch.Tensor) or trajectory.dtype != torch.float32 or trajectory.ndim != 6:
        raise ValueError("it holds no float32 (steps+1, 1, T, C, h, w) trajectory")
    frames, height, width = settings.latent_shape()
    expected = (settings.steps + 1, 1, frames, trajectory.shape[3], height, width)
    if tuple(trajectory.shape) != expected:
        raise ValueError(f"its trajectory is {tuple(trajectory.shape)}, not {expected}")
    if not torch.isfinite(trajectory).all():
        raise ValueError("its trajectory holds non-finite values")


def _read(path: str):
    """(stored settings dict, trajectory) of a cache file; ValueError when it is not one."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a truncated or foreign file
        raise ValueError(first_line(error)) from None
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT or \
            not isinstance(stored.get("settings"), dict):
        raise ValueError(f"not an inversion cache of format {CACHE_FORMAT}")
    return stored["settings"], stored.get("trajectory")


def load_inversion(path: str, settings: InversionSettings) -> Optional[torch.Tensor]:
    """The cached trajectory (steps+1, 1, T, C, h, w) when `path` holds one made with `settings`, else None
    (with a one-line note saying why, unless the file does not exist)."""
    if not os.path.exists(path):
        return None
    try:
        stored, trajectory = _read(path)
    except ValueError as error:
        print(f"note: {path} cannot be used ({error}); inverting again")
        return None
    differing = [field.name for field in fields(settings) if stored.get(field.name) != getattr(settings, field.name)]
    if differing:
        print(f"note: {path} was made with other settings ({', '.join(differing)}); inverting again")
        return None
    try:
        _check_trajectory(trajectory, settings)
    except ValueError as error:
        print(f"note: {path} cannot be used ({error}); inverting again")
        return None
    print(f"reusing the inversion in {path}")
    return trajectory


def save_inversion(path: str, trajectory: torch.Tensor, settings: InversionSettings) -> str:
    """Write the trajectory and its settings to `path` through `write_file`: checked by reading it back, never
    half-written under its name."""
    _check_trajectory(trajectory, settings)
    data = {"format": CACHE_FORMAT, "settings": asdict(settings), "trajectory": trajectory.detach().cpu()}

    def verify(temporary):
        try:
            stored, stored_trajectory = _read(temporary)
        except ValueError as error:
            raise OutputCheckError(f"the inversion does not read back ({error})") from error
        if stored != data["settings"] or not torch.equal(stored_trajectory, data["trajectory"]):
            raise OutputCheckError("the inversion reads back different")

    return write_file(path, lambda temporary: torch.save(data, temporary), verify=verify)
