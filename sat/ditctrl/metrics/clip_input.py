"""Frames as CLIP sees them in the original's metrics: ADM's centre crop, then CLIP's mean and std.

ADM's `center_crop_arr` (guided-diffusion's image_datasets.py): while the short side is at least twice the
target size, halve both sides with PIL's BOX filter; then scale so the short side is the target size (each side
rounded) with BICUBIC; then cut the centred square. The result goes to [0, 1] and is normalised per channel.
"""
import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's centre crop of a PIL image: (image_size, image_size, 3) uint8."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - image_size) // 2
    left = (pixels.shape[1] - image_size) // 2
    return pixels[top:top + image_size, left:left + image_size]


def clip_pixels(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """(F, H, W, 3) uint8 frames -> (F, 3, S, S) float32 CLIP input, S = image_size."""
    crops = np.stack([center_crop_arr(Image.fromarray(frame), image_size) for frame in frames.numpy()])
    pixels = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return pixels.sub(mean).div(std)
