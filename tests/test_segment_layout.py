import doctest
import itertools

import pytest
import torch

import ditctrl.segment_layout as segment_layout_module
from ditctrl.latent_blending import LatentBlender, blend_weights
from ditctrl.run_size import long_latent_frames, window_count
from ditctrl.segment_layout import segment_layout


def test_docstring_example():
    assert doctest.testmod(segment_layout_module).failed == 0


@pytest.mark.parametrize("prompts, overlap, blocks, mid, windows, length, starts", [
    (3, 9, 2, 0, 7, 37, (0, 4, 8, 12, 16, 20, 24)),
    (3, 6, 1, 0, 5, 41, (0, 7, 14, 21, 28)),
    (2, 9, 2, 0, 4, 25, (0, 4, 8, 12)),
    (2, 6, 1, 0, 3, 27, (0, 7, 14)),
    (3, 9, 2, 1, 8, 41, (0, 4, 8, 12, 16, 20, 24, 28)),
    (4, 9, 2, 0, 10, 49, tuple(range(0, 37, 4))),
    (2, 9, 2, 5, 4, 25, (0, 4, 8, 12)),  # longer_mid_segment ignored without middle prompts
])
def test_worked_examples(prompts, overlap, blocks, mid, windows, length, starts):
    layout = segment_layout(prompts, 13, overlap, blocks, mid)
    assert layout.num_windows == windows
    assert layout.num_windows == prompts + blocks * (prompts - 1) + (mid * (prompts - 2) if prompts > 2 else 0)
    assert layout.length == length and layout.starts == starts
    assert layout.video_frames == 4 * (length - 1) + 1


def test_conditioning_and_base_windows():
    layout = segment_layout(3, 13, 9, 2, longer_mid_segment=1)
    mixes = [(c.first, c.second, round(c.w_first, 4)) for c in layout.conditions]
    assert mixes == [(0, 0, 1.0), (0, 1, 0.6667), (0, 1, 0.3333), (1, 1, 1.0), (1, 1, 1.0),
                     (1, 2, 0.6667), (1, 2, 0.3333), (2, 2, 1.0)]
    assert layout.base_windows == (0, 3, 7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_prompts=2, tile=13, overlap=13, num_transition_blocks=2), "smaller than the tile"),
    (dict(num_prompts=2, tile=13, overlap=14, num_transition_blocks=2), "smaller than the tile"),
    (dict(num_prompts=0, tile=13, overlap=9, num_transition_blocks=2), "at least one prompt"),
    (dict(num_prompts=2, tile=13, overlap=6, num_transition_blocks=2), "even length"),
    (dict(num_prompts=2, tile=13, overlap=9, num_transition_blocks=-1), ">= 0"),
])
def test_impossible_layouts_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        segment_layout(**kwargs)


def test_blend_weights_symmetric_positive():
    w = blend_weights(13)
    assert torch.allclose(w * 13, torch.tensor([1, 3, 5, 7, 9, 11, 13, 11, 9, 7, 5, 3, 1], dtype=torch.float32))
    assert torch.allclose(w, w.flip(0), atol=1e-7) and bool((w > 0).all())


def rose_weight_sums(layout):
    blender = LatentBlender(torch.zeros(1, layout.length, 1, 1, 1), layout.tile)
    for k in range(layout.num_windows - 1):  # each pair adds its source and its target window
        for w in (k, k + 1):
            blender.add(layout.window(w), torch.zeros(1, layout.tile, 1, 1, 1))
    return blender.weight


def test_accumulated_weights_match_spec_table():
    sums = rose_weight_sums(segment_layout(3, 13, 9, 2)) * 13
    expected = [1, 3, 5, 7, 11, 17, 23, 25, 29, 35, 41, 39, 39, 42, 46, 42, 40, 42, 46, 42, 40, 42, 46, 42, 39, 39,
                41, 35, 29, 25, 23, 17, 11, 7, 5, 3, 1]
    assert torch.allclose(sums, torch.tensor(expected, dtype=torch.float32), atol=1e-4)


def test_constant_predictions_blend_to_that_constant():
    layout = segment_layout(3, 13, 6, 1)
    value = torch.randn(1, 1, 4, 2, 3).expand(1, 13, 4, 2, 3)
    blender = LatentBlender(torch.zeros(1, layout.length, 4, 2, 3), layout.tile)
    for w in range(layout.num_windows):
        blender.add(layout.window(w), value)
    assert torch.allclose(blender.result(), value[:, :1].expand(1, layout.length, 4, 2, 3), atol=1e-6)


def test_the_run_size_closed_forms_equal_the_layout():
    """run_size counts windows and frames without building the layout (an absurd count must not fill memory)."""
    built = 0
    for prompts, blocks, mid, overlap in itertools.product(range(1, 6), range(4), range(3), (0, 4, 9, 12)):
        try:
            layout = segment_layout(prompts, 13, overlap, blocks, mid)
        except ValueError:  # an even length
            continue
        built += 1
        assert window_count(prompts, blocks, mid) == layout.num_windows
        assert long_latent_frames(layout.num_windows, 13, overlap) == layout.length
    assert built > 100
