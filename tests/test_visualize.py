"""Attention-map visualisation: saved maps equal naive running means of explicit softmax maps."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ditctrl.attention import AttentionController, build_controller
from ditctrl.attention import visualize
from ditctrl.attention.kernels import attention
from ditctrl.attention.visualize import AttentionVisualizer
from ditctrl.attention_figures import overview_figure, video_frame_of_latent
from ditctrl.run_size import VISUALIZED_FILES
from tiny_models import small_dit

HEADS, HEAD_DIM, TEXT = 3, 8, 5
TOKENS = (0, 2, 4)
DPI = 20


def normalise(x):
    return (x - x.min()) / (x.max() - x.min() + 1e-6)


def naive_maps(layers_qk, text_length, grid, tokens):
    """Running mean over the given layers of explicit head-averaged softmax maps, cut as the original's."""
    frames, rows, cols = grid
    full = torch.stack([torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM ** 0.5, -1).mean(1) for q, k in layers_qk])
    mean = full.mean(0)  # (B, N, N)
    hw = rows * cols
    token_frame = min(10, frames - 1)
    video_to_text = mean[1, text_length:, :text_length].reshape(frames, rows, cols, text_length)
    token_maps = torch.stack([normalise(video_to_text[token_frame, :, :, j]) for j in tokens])
    start = text_length + (frames // 2) * hw
    centre = [text_length + f * hw + (rows // 2) * cols + cols // 2 for f in range(frames)]
    return {
        "tokens": token_maps.numpy(),
        "text": normalise(mean[1, :text_length, :text_length]).numpy(),
        "spatial": normalise(mean[0, start:start + hw, start:start + hw]).numpy(),
        "temporal": normalise(mean[0][centre][:, centre]).numpy(),
    }


def random_qkv(seed, length):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, HEADS, length, HEAD_DIM, generator=gen) for _ in range(3)]


def folder(root, step, layer):
    return os.path.join(root, "attn_map", f"step{step}_layer{layer}")


@pytest.mark.parametrize("grid", [(12, 3, 4), (3, 2, 5)])
def test_saved_maps_are_running_means_of_full_softmax_maps(tmp_path, grid):
    frames, rows, cols = grid
    length = TEXT + frames * rows * cols
    controller = AttentionVisualizer(steps=[1], layers=[1, 3], tokens=TOKENS, output_dir=str(tmp_path), dpi=DPI)
    controller.begin_forward(step=1, token_grid=grid)
    seen = []
    for layer in range(5):
        q, k, v = random_qkv(layer, length)
        out = controller(q, k, v, layer, TEXT)
        assert torch.equal(out, attention(q, k, v))
        seen.append((q, k))
        if layer not in (1, 3):
            continue
        assert not os.path.exists(folder(tmp_path, 1, layer))  # nothing is written inside attention
        controller.end_step()
        expected = naive_maps(seen, TEXT, grid, TOKENS)
        where = folder(tmp_path, 1, layer)
        frame, (row, col) = frames // 2, (rows // 2, cols // 2)
        saved = {"text": np.load(os.path.join(where, "text_attn_map.npy")),
                 "spatial": np.load(os.path.join(where, f"spatial_attn_map_frame{frame}.npy")),
                 "temporal": np.load(os.path.join(where, f"temporal_attn_map_pos_{row}_{col}.npy")),
                 "tokens": controller.records[-1].maps}
        for name, array in saved.items():
            np.testing.assert_allclose(array, expected[name], atol=1e-5, err_msg=name)
        assert saved["text"].shape == (TEXT, TEXT)
        assert saved["spatial"].shape == (rows * cols, rows * cols)
        assert saved["temporal"].shape == (frames, frames)
        assert saved["tokens"].shape == (len(TOKENS), rows, cols)
    assert [(r.step, r.layer, r.frame) for r in controller.records] == [(1, 1, min(10, frames - 1)),
                                                                         (1, 3, min(10, frames - 1))]


def test_nothing_computed_or_written_outside_requested_steps(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("attention maps computed at a step that was not requested")

    monkeypatch.setattr(visualize, "attention_with_lse", forbidden)
    monkeypatch.setattr(visualize, "probabilities", forbidden)
    controller = AttentionVisualizer(steps=[2], layers=[0, 1], tokens=TOKENS, output_dir=str(tmp_path), dpi=DPI)
    grid = (2, 2, 3)
    for step in (None, 0, 1, 3):
        controller.begin_forward(step=step, token_grid=grid)
        for layer in range(3):
            q, k, v = random_qkv(layer, TEXT + 12)
            assert torch.equal(controller(q, k, v, layer, TEXT), attention(q, k, v))
    assert not os.path.exists(tmp_path / "attn_map")
    assert controller.figures_written == [] and controller.records == []


def test_layers_after_the_last_requested_one_are_not_computed(tmp_path, monkeypatch):
    calls = []
    real = visualize.attention_with_lse

    def counted(q, k, v):
        calls.append(q.shape)
        return real(q, k, v)

    monkeypatch.setattr(visualize, "attention_with_lse", counted)
    controller = AttentionVisualizer(steps=[0], layers=[1], tokens=TOKENS, output_dir=str(tmp_path), dpi=DPI)
    controller.begin_forward(step=0, token_grid=(2, 2, 3))
    for layer in range(4):
        controller(*random_qkv(layer, TEXT + 12), layer, TEXT)
    assert len(calls) == 2 * 2  # layers 0 and 1, one fused call per batch row


def test_small_dit_forward_writes_every_promised_file(tmp_path):
    model = small_dit()
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(1, 3, 16, 4, 6, generator=gen).expand(2, -1, -1, -1, -1), torch.full((2,), 499.0),
             torch.cat([torch.zeros(1, 7, 24), torch.randn(1, 7, 24, generator=gen)]))
    args = SimpleNamespace(attn_map_step_idx=[25], attn_map_layer_idx=[2, 3], attn_map_token_idx=[0, 1, 2, 3, 4, 5])
    controller = AttentionVisualizer.from_args(args, str(tmp_path))
    controller.dpi = DPI
    with torch.no_grad():
        model.set_controller(AttentionController())
        plain = model(*batch, step=25)
        model.set_controller(controller)
        assert torch.equal(model(*batch, step=24), plain)
        assert controller.figures_written == []
        assert torch.equal(model(*batch, step=25), plain)
    controller.end_step()
    frames, rows, cols = 3, 2, 3  # (T, H/2, W/2) of the latents
    for layer in (2, 3):
        where = folder(tmp_path, 25, layer)
        expected = {f"token_attention_vertical_step_25_layer_{layer}_selected_frame_2_first_6_tokens.png": None,
                    "text_attn_map.png": None, "text_attn_map.npy": (7, 7),
                    "spatial_attn_map_frame1.png": None, "spatial_attn_map_frame1.npy": (rows * cols, rows * cols),
                    "temporal_attn_map_pos_1_1.png": None, "temporal_attn_map_pos_1_1.npy": (frames, frames)}
        assert sorted(os.listdir(where)) == sorted(expected) and len(expected) == VISUALIZED_FILES  # as run_size counts
        for name, shape in expected.items():
            path = os.path.join(where, name)
            assert path in controller.figures_written
            if shape is not None:
                array = np.load(path)
                assert array.shape == shape and array.min() == 0 and 0.99 < array.max() <= 1
            else:
                with Image.open(path) as image:
                    assert min(image.size) >= 30 and np.asarray(image.convert("RGB")).std() > 5  # not blank
    with Image.open(controller.figures_written[0]) as panels:
        assert panels.size[1] > 2 * panels.size[0]  # six panels stacked vertically

    video = np.random.default_rng(0).integers(0, 256, (9, 32, 48, 3), dtype=np.uint8)
    overlaid = controller.write_overview(video)
    assert overlaid == os.path.join(tmp_path, "attn_map", "overview.png") == controller.figures_written[-1]
    with Image.open(overlaid) as image:
        with_frames = np.asarray(image.convert("RGB"))
    plain_path = overview_figure(controller.records, None, str(tmp_path / "maps_only.png"), dpi=DPI)
    with Image.open(plain_path) as image:
        maps_only = np.asarray(image.convert("RGB"))
    assert with_frames.shape == maps_only.shape and with_frames.shape[1] > with_frames.shape[0]
    assert np.abs(with_frames.astype(int) - maps_only.astype(int)).mean() > 1  # the frames show through


def test_latent_frame_maps_to_its_last_decoded_frame():
    assert [video_frame_of_latent(f, 49) for f in (0, 1, 10, 12)] == [0, 4, 40, 48]
    assert video_frame_of_latent(12, 45) == 44


@pytest.mark.parametrize("steps, layers, tokens, key", [([], [1], [0], "attn_map_step_idx"),
                                                        ([1], [], [0], "attn_map_layer_idx"),
                                                        ([1], [1], [], "attn_map_token_idx")])
def test_empty_selection_rejected(tmp_path, steps, layers, tokens, key):
    with pytest.raises(ValueError, match=key):
        AttentionVisualizer(steps, layers, tokens, str(tmp_path))


def test_bad_batch_or_token_rejected_before_any_map(tmp_path):
    controller = AttentionVisualizer([0], [0], [TEXT], str(tmp_path))
    controller.begin_forward(step=0, token_grid=(2, 2, 3))
    with pytest.raises(ValueError, match=f"attn_map_token_idx contains {TEXT}"):
        controller(*random_qkv(0, TEXT + 12), 0, TEXT)
    controller = AttentionVisualizer([0], [0], [0], str(tmp_path))
    controller.begin_forward(step=0, token_grid=(2, 2, 3))
    q, k, v = (torch.cat([t, t]) for t in random_qkv(0, TEXT + 12))
    with pytest.raises(ValueError, match="batch of 2 rows"):
        controller(q, k, v, 0, TEXT)
    assert not os.path.exists(tmp_path / "attn_map")


def test_overview_rejects_a_video_without_rgb_channels(tmp_path):
    record = visualize.TokenMaps(0, 0, 0, ("token 0",), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="frames_rgb"):
        overview_figure([record], np.zeros((4, 8, 8)), str(tmp_path / "o.png"))


def test_token_maps_are_labelled_with_the_prompt_s_pieces(tmp_path):
    """The run hands the controllers each prompt's T5 pieces: the token panels and the overview are titled with the
    pieces at attn_map_token_idx (by number alone where the pieces are not known)."""
    args = SimpleNamespace(attn_map_step_idx=[0], attn_map_layer_idx=[1], attn_map_token_idx=[0, 2])
    assert build_controller("VisualizeAdaLNMixin", args, str(tmp_path)).labels == ("token 0", "token 2")
    controller = build_controller("VisualizeAdaLNMixin", args, str(tmp_path), [("▁An", "▁owl", "▁on", "</s>")])
    controller.dpi = DPI
    controller.begin_forward(step=0, token_grid=(2, 2, 3))
    for layer in range(2):
        controller(*random_qkv(layer, TEXT + 12), layer, TEXT)
    controller.end_step()
    assert [record.labels for record in controller.records] == [('token 0 "▁An"', 'token 2 "▁on"')]
