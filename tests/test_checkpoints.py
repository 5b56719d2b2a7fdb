"""Checkpoint readers against files written in the released layouts (docs/weights.md, "SAT layout")."""
import argparse
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ditctrl.checkpoints import (
    AUXILIARY_DIT_KEYS,
    POSITION_TABLE_KEY,
    MissingCheckpointError,
    SafetensorsSource,
    load_strict,
    read_transformer_state_dict,
    read_vae_state_dict,
)
from ditctrl.synthetic_checkpoint import write_transformer_checkpoint, write_vae_checkpoint

README_HINT = "see README.md, section 'Download the weights', or run with --tiny"


def dit_like_state_dict(seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "mixins.patch_embed.proj.weight": (8, 4, 2, 2),
        "mixins.patch_embed.text_proj.weight": (8, 6),
        "transformer.layers.0.attention.query_key_value.weight": (24, 8),
        "transformer.layers.0.attention.query_key_value.bias": (24,),
        "time_embed.0.weight": (5, 8),
    }
    weights = {key: torch.randn(shape, generator=generator).half() for key, shape in shapes.items()}
    weights[POSITION_TABLE_KEY] = torch.randn(1, 10, 8, generator=generator)
    return weights


def save_dit_file(folder, checkpoint, latest="1000"):
    os.makedirs(os.path.join(folder, latest), exist_ok=True)
    torch.save(checkpoint, os.path.join(folder, latest, "mp_rank_00_model_states.pt"))
    with open(os.path.join(folder, "latest"), "w") as f:
        f.write(latest)


def assert_same_tensors(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def test_transformer_file_has_the_released_layout(tmp_path):
    weights = dit_like_state_dict()
    path = write_transformer_checkpoint(weights, tmp_path)

    assert path == os.path.join(tmp_path, "1000", "mp_rank_00_model_states.pt")
    assert (tmp_path / "latest").read_text() == "1000"
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["module"]
    assert sorted(raw["module"]) == sorted("model.diffusion_model." + k for k in weights if k != POSITION_TABLE_KEY)


def test_transformer_round_trip_is_exact_without_the_position_table(tmp_path):
    weights = dit_like_state_dict()
    write_transformer_checkpoint(weights, tmp_path)

    expected = {k: v for k, v in weights.items() if k != POSITION_TABLE_KEY}
    assert_same_tensors(read_transformer_state_dict(tmp_path), expected)


def test_latest_may_name_the_release_folder(tmp_path):
    weights = dit_like_state_dict()
    write_transformer_checkpoint(weights, tmp_path, iteration="release")

    assert os.path.isfile(tmp_path / "release" / "mp_rank_00_model_states.pt")
    assert sorted(read_transformer_state_dict(tmp_path)) == sorted(k for k in weights if k != POSITION_TABLE_KEY)


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "abc", ""])
def test_bad_latest_text_is_a_clear_error(tmp_path, text):
    write_transformer_checkpoint(dit_like_state_dict(), tmp_path)
    (tmp_path / "latest").write_text(text)

    with pytest.raises(ValueError, match=rf"latest: expected an integer > 0 or 'release', found '{text}'"):
        read_transformer_state_dict(tmp_path)


def test_missing_transformer_folder_latest_or_file_names_the_path(tmp_path):
    folder = tmp_path / "transformer"
    with pytest.raises(MissingCheckpointError, match=re.escape(str(folder))) as error:
        read_transformer_state_dict(folder)
    assert README_HINT in str(error.value)
    assert isinstance(error.value, FileNotFoundError)

    folder.mkdir()
    with pytest.raises(MissingCheckpointError, match=re.escape(str(folder / "latest"))):
        read_transformer_state_dict(folder)

    (folder / "latest").write_text("1\n")
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'latest'} names the folder '1', but {folder / '1'} "
                                                   "does not exist")):
        read_transformer_state_dict(folder)

    (folder / "1").mkdir()
    with pytest.raises(MissingCheckpointError, match=re.escape(str(folder / "1" / "mp_rank_00_model_states.pt"))):
        read_transformer_state_dict(folder)


def test_auxiliary_keys_are_dropped(tmp_path):
    weights = dit_like_state_dict()
    stray = {key: torch.zeros(3) for key in AUXILIARY_DIT_KEYS}
    save_dit_file(tmp_path, {"module": {"model.diffusion_model." + k: v for k, v in {**weights, **stray}.items()}})

    expected = {k: v for k, v in weights.items() if k != POSITION_TABLE_KEY}
    assert_same_tensors(read_transformer_state_dict(tmp_path), expected)


@pytest.mark.parametrize("wrapper", ["module", "model", "state_dict"])
@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_prefixed_and_unprefixed_files_load_alike(tmp_path, wrapper, prefix):
    weights = {k: v for k, v in dit_like_state_dict().items() if k != POSITION_TABLE_KEY}
    save_dit_file(tmp_path, {wrapper: {prefix + k: v for k, v in weights.items()}}, latest="1")

    assert_same_tensors(read_transformer_state_dict(tmp_path), weights)


def test_only_dit_keys_are_kept_from_a_whole_engine_file(tmp_path):
    weights = {k: v for k, v in dit_like_state_dict().items() if k != POSITION_TABLE_KEY}
    engine = {"model.diffusion_model." + k: v for k, v in weights.items()}
    engine["first_stage_model.encoder.conv_in.conv.weight"] = torch.zeros(2)
    engine["conditioner.embedders.0.transformer.shared.weight"] = torch.zeros(2)
    save_dit_file(tmp_path, {"module": engine})

    assert_same_tensors(read_transformer_state_dict(tmp_path), weights)


def test_file_with_pickled_objects_loads_with_a_warning(tmp_path):
    weights = {k: v for k, v in dit_like_state_dict().items() if k != POSITION_TABLE_KEY}
    checkpoint = {"module": {"model.diffusion_model." + k: v for k, v in weights.items()},
                  "args": argparse.Namespace(mode="inference")}
    save_dit_file(tmp_path, checkpoint)

    with pytest.warns(UserWarning, match="weights_only=False"):
        assert_same_tensors(read_transformer_state_dict(tmp_path), weights)


def test_file_without_known_wrapper_is_rejected(tmp_path):
    save_dit_file(tmp_path, {"weights": {"a": torch.zeros(1)}})

    with pytest.raises(ValueError, match=r"expected the weights under one of \['module', 'model', 'state_dict'\]"):
        read_transformer_state_dict(tmp_path)


def test_vae_round_trip_drops_training_only_tensors(tmp_path):
    generator = torch.Generator().manual_seed(1)
    weights = {
        "encoder.conv_in.conv.weight": torch.randn(4, 3, 3, 3, 3, generator=generator),
        "decoder.conv_out.conv.bias": torch.randn(3, generator=generator),
    }
    path = tmp_path / "vae" / "3d-vae.pt"
    write_vae_checkpoint(weights, path)

    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["state_dict"]
    assert any(key.startswith("loss.") for key in raw["state_dict"])
    assert_same_tensors(read_vae_state_dict(path), weights)


def test_missing_vae_file_names_the_path(tmp_path):
    with pytest.raises(MissingCheckpointError, match=re.escape(str(tmp_path / "3d-vae.pt"))):
        read_vae_state_dict(tmp_path / "3d-vae.pt")


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.table = nn.Parameter(torch.full((1, 5, 3), 7.0), requires_grad=False)


def tiny_net_weights():
    generator = torch.Generator().manual_seed(2)
    return {"proj.weight": torch.randn(3, 4, generator=generator), "proj.bias": torch.randn(3, generator=generator),
            "table": torch.randn(1, 5, 3, generator=generator)}


def test_strict_load_copies_and_converts_to_the_module_dtype():
    net = TinyNet().half()
    weights = tiny_net_weights()
    load_strict(net, weights, "tiny")

    for key, value in net.state_dict().items():
        assert value.dtype == torch.float16
        assert torch.equal(value, weights[key].half()), key


def test_strict_load_allows_ignored_keys_to_be_absent():
    net = TinyNet()
    weights = tiny_net_weights()
    del weights["table"]
    load_strict(net, weights, "tiny", ignore=("table",))

    assert torch.equal(net.proj.weight, weights["proj.weight"])
    assert torch.equal(net.table, torch.full((1, 5, 3), 7.0))


def test_strict_load_reports_missing_key():
    weights = tiny_net_weights()
    del weights["proj.bias"]
    with pytest.raises(ValueError, match=r"tiny checkpoint does not fit the model: 1 missing keys \(proj.bias\)"):
        load_strict(TinyNet(), weights, "tiny")


def test_strict_load_reports_unexpected_key():
    weights = {**tiny_net_weights(), "extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"1 unexpected keys \(extra.weight\)"):
        load_strict(TinyNet(), weights, "tiny")


def test_strict_load_reports_wrong_shape_and_leaves_the_module_untouched():
    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weights = {**tiny_net_weights(), "proj.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match=r"1 shape mismatches, file vs model \(proj.weight \(4, 4\) vs \(3, 4\)\)"):
        load_strict(net, weights, "tiny")
    assert_same_tensors(net.state_dict(), before)


def test_strict_load_lists_at_most_five_offenders_and_the_counts():
    weights = {**tiny_net_weights(), **{f"extra.{i}": torch.zeros(1) for i in range(7)}}
    del weights["proj.bias"]
    with pytest.raises(ValueError) as error:
        load_strict(TinyNet(), weights, "tiny")
    message = str(error.value)
    assert "1 missing keys (proj.bias)" in message
    assert "7 unexpected keys (extra.0, extra.1, extra.2, extra.3, extra.4)" in message
    assert "extra.5" not in message


def truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep, problem", [(0.0, "empty file (0 bytes)"),
                                           (0.5, "not a complete torch checkpoint archive")])
def test_empty_or_truncated_pt_is_one_error_naming_it(tmp_path, keep, problem):
    transformer = write_transformer_checkpoint(dit_like_state_dict(), tmp_path / "transformer")
    vae = tmp_path / "vae" / "3d-vae.pt"
    write_vae_checkpoint({"encoder.conv_in.conv.weight": torch.zeros(2)}, vae)
    for path, read in ((transformer, lambda: read_transformer_state_dict(tmp_path / "transformer")),
                       (vae, lambda: read_vae_state_dict(vae))):
        truncate(path, keep)
        with pytest.raises(ValueError, match=re.escape(f"{path}: {problem}")):
            read()


@pytest.mark.parametrize("keep, problem", [(0.0, "empty file (0 bytes)"), (0.5, "unreadable safetensors file"),
                                           (None, "unreadable safetensors file")])
def test_empty_truncated_or_lfs_pointer_shard_is_one_error_naming_it(tmp_path, keep, problem):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(50, 50)}, path)
    if keep is None:
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 10000\n")
    else:
        truncate(path, keep)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {problem}")):
        SafetensorsSource(tmp_path, "model.safetensors")


def test_index_naming_a_tensor_its_shard_lacks_is_named(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "m-1.safetensors")
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "m-1.safetensors",
                                                                                  "b": "m-1.safetensors"}}))
    with pytest.raises(ValueError, match=re.escape("m.safetensors.index.json puts b in m-1.safetensors, but that "
                                                   "file does not hold it")):
        SafetensorsSource(tmp_path, "m.safetensors")


def test_missing_tensor_and_wrong_shape_name_the_file(tmp_path):
    save_file({"proj.weight": torch.zeros(3, 5), "table": torch.zeros(1, 5, 3)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=re.escape("tiny checkpoint does not fit the model: 1 missing keys (proj.bias) "
                                                   f"in {tmp_path}; 1 shape mismatches, file vs model (proj.weight "
                                                   f"(3, 5) vs (3, 4)) in {tmp_path / 'w.safetensors'}")):
        load_strict(TinyNet(), SafetensorsSource(tmp_path, "w.safetensors"), "tiny")


def test_safetensors_load_reads_into_the_module_dtype(tmp_path):
    weights = tiny_net_weights()
    save_file(weights, tmp_path / "w.safetensors")
    net = TinyNet().to(torch.bfloat16)
    load_strict(net, SafetensorsSource(tmp_path, "w.safetensors"), "tiny")
    assert all(torch.equal(value, weights[key].to(torch.bfloat16)) for key, value in net.state_dict().items())
