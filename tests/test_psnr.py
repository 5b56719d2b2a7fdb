"""PSNR of a reconstruction against the input frames, by hand."""
import math

import pytest
import torch

from ditctrl.psnr import psnr


def test_psnr_equals_the_hand_computation():
    """Two of 2·4·4·3 = 96 values differ, by 10 and by 20: MSE = (100 + 400) / 96, PSNR = 10·log10(255² / MSE)."""
    reference = torch.full((2, 4, 4, 3), 100, dtype=torch.uint8)
    frames = reference.clone()
    frames[0, 1, 2, 0] = 110
    frames[1, 3, 3, 2] = 80
    assert psnr(frames, reference) == pytest.approx(10 * math.log10(255**2 * 96 / 500), rel=1e-12)
    assert psnr(frames, reference) == pytest.approx(40.9638, abs=1e-4)  # 10·log10(65025 · 0.192)


def test_psnr_is_infinite_for_equal_frames_and_symmetric():
    frames = torch.randint(0, 256, (3, 8, 8, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    other = torch.randint(0, 256, (3, 8, 8, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    assert psnr(frames, frames.clone()) == math.inf
    assert psnr(frames, other) == psnr(other, frames)


def test_psnr_needs_uint8_frames_of_one_shape():
    frames = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8 frames of one shape"):
        psnr(frames, frames[:1])
    with pytest.raises(ValueError, match="uint8 frames of one shape"):
        psnr(frames.float(), frames)
