"""inversion.pt: reused only when every setting matches; never a corrupt, partial or foreign file; never half-written."""
import dataclasses
import os
import re

import pytest
import torch

from ditctrl import inversion_cache, output_files
from ditctrl.inversion_cache import CACHE_NAME, InversionSettings, frames_digest, load_inversion, save_inversion

FRAMES = torch.randint(0, 256, (9, 32, 48, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
SETTINGS = InversionSettings(video=frames_digest(FRAMES), frames=9, height=32, width=48, model="CogVideoX-2b",
                             weights="/weights/CogVideoX-2b", steps=4, shift_scale=3.0, source_prompt="",
                             guidance_scale=6.0, dynamic_cfg=False, dtype="float32")
TRAJECTORY = torch.randn(5, 1, 3, 16, 4, 6, generator=torch.Generator().manual_seed(1))
OTHER_VALUES = dict(video=frames_digest(FRAMES.flip(0)), frames=17, height=48, width=72, model="CogVideoX-5b",
                    weights="/weights/other", steps=50, shift_scale=1.0, source_prompt="a dog",
                    guidance_scale=1.0, dynamic_cfg=True, dtype="bfloat16")


@pytest.fixture
def cache(tmp_path):
    return save_inversion(str(tmp_path / CACHE_NAME), TRAJECTORY, SETTINGS)


def test_a_cache_made_with_the_same_settings_is_reused(cache, capsys):
    assert torch.equal(load_inversion(cache, SETTINGS), TRAJECTORY)
    assert capsys.readouterr().out == f"reusing the inversion in {cache}\n"
    assert load_inversion(cache + ".missing", SETTINGS) is None


def test_every_setting_is_compared():
    assert set(OTHER_VALUES) == {field.name for field in dataclasses.fields(InversionSettings)}


@pytest.mark.parametrize("name", OTHER_VALUES)
def test_a_cache_made_with_another_setting_is_not_used(cache, name, capsys):
    assert load_inversion(cache, dataclasses.replace(SETTINGS, **{name: OTHER_VALUES[name]})) is None
    assert capsys.readouterr().out == f"note: {cache} was made with other settings ({name}); inverting again\n"


def test_the_video_digest_sees_every_pixel_and_the_shape():
    changed = FRAMES.clone()
    changed[4, 10, 20, 1] ^= 1
    assert frames_digest(changed) != frames_digest(FRAMES)
    assert frames_digest(FRAMES.reshape(9, 48, 32, 3)) != frames_digest(FRAMES)
    assert frames_digest(FRAMES.clone()) == frames_digest(FRAMES)


def truncated(path):
    data = open(path, "rb").read()
    with open(path, "wb") as file:
        file.write(data[:len(data) // 2])


def foreign(path):
    torch.save({"trajectory": TRAJECTORY}, path)


def wrong_shape(path):
    torch.save({"format": 1, "settings": dataclasses.asdict(SETTINGS), "trajectory": TRAJECTORY[:4]}, path)


def not_finite(path):
    trajectory = TRAJECTORY.clone()
    trajectory[2, 0, 1, 3, 2, 2] = float("nan")
    torch.save({"format": 1, "settings": dataclasses.asdict(SETTINGS), "trajectory": trajectory}, path)


def garbage(path):
    with open(path, "wb") as file:
        file.write(os.urandom(1000))


@pytest.mark.parametrize("spoil, reason", [(truncated, ""), (garbage, ""), (foreign, "not an inversion cache"),
                                           (wrong_shape, r"its trajectory is \(4, 1, 3, 16, 4, 6\)"),
                                           (not_finite, "non-finite")])
def test_a_corrupt_partial_or_foreign_cache_is_not_used(cache, spoil, reason, capsys):
    spoil(cache)
    assert load_inversion(cache, SETTINGS) is None
    note = capsys.readouterr().out
    assert note.startswith(f"note: {cache} cannot be used (") and note.endswith("); inverting again\n")
    assert re.search(reason, note)
    assert note.count("\n") == 1


def test_a_failed_write_leaves_neither_a_cache_nor_a_partial_file(tmp_path, monkeypatch):
    """A write that breaks off (here: a full disk after half the bytes) is one error; the final name never holds
    a partial file, and an earlier cache stays as it was."""
    path = str(tmp_path / CACHE_NAME)
    save_inversion(path, TRAJECTORY, SETTINGS)
    real_save = torch.save

    def save_half_then_fail(data, target):
        real_save(data, target)
        truncated(target)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(inversion_cache.torch, "save", save_half_then_fail)
    with pytest.raises(output_files.OutputWriteError, match="No space left on device"):
        save_inversion(path, TRAJECTORY * 2, SETTINGS)
    assert os.listdir(tmp_path) == [CACHE_NAME]
    assert torch.equal(load_inversion(path, SETTINGS), TRAJECTORY)


def test_a_trajectory_that_does_not_fit_its_settings_is_not_written(tmp_path):
    with pytest.raises(ValueError, match="not \\(51, 1, 3"):
        save_inversion(str(tmp_path / CACHE_NAME), TRAJECTORY, dataclasses.replace(SETTINGS, steps=50))
    assert os.listdir(tmp_path) == []
