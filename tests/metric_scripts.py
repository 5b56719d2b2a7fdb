"""The metrics/ scripts, imported by path (the folder is not a package), and what their tests share."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from repo_paths import REPO
from ditctrl.video_io import write_mp4

METRICS_DIR = os.path.join(REPO, "metrics")


def script(name: str):
    """The module of metrics/<name>.py."""
    spec = importlib.util.spec_from_file_location(f"metrics_script_{name}", os.path.join(METRICS_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_video(path, frames, fps: int = 8) -> str:
    """(F, H, W, 3) uint8 frames (numpy or torch) as an mp4."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_mp4(str(path), torch.as_tensor(np.asarray(frames)), fps)


def smooth_frames(count: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """A camera panning over a smooth random picture: (count, height, width, 3) uint8."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4 + count, generator=generator)
    picture = torch.nn.functional.interpolate(coarse, size=(height, width + 2 * count), mode="bilinear")[0]
    picture = (picture.clamp(0, 1).permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    return np.stack([picture[:, 2 * f:2 * f + width] for f in range(count)])


def no_model_work(monkeypatch):
    """Make every metric model load fail the test: bad input must be refused before it."""
    def model_work(*args, **kwargs):
        raise AssertionError("the command reached model work")

    for name in ("load_clip", "load_clip_vision"):
        monkeypatch.setattr(f"ditctrl.metrics.clip_features.{name}", model_work)
    monkeypatch.setattr("ditctrl.metrics.motion_smoothness.load_amt_s", model_work)


def one_line_error(capsys, call, *args) -> str:
    """The single `error: ...` line of a call that must exit with status 2."""
    with pytest.raises(SystemExit) as stop:
        call(*args)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return errors[0]
