"""Motion smoothness as VBench defines it: how well AMT-S predicts each odd frame from its even neighbours.

The even frames 0, 2, 4, ... go to [0, 1] and are padded (edge pixels repeated) to a multiple of 16 on each side;
AMT-S interpolates the middle of each adjacent pair (time 0.5); each prediction, unpadded and taken back to uint8
(x 255, clipped, truncated), is compared with the odd frame it stands for: the mean absolute difference over its
pixels and channels, averaged over the predicted frames, gives score = (255 - mean difference) / 255. A video of
F frames has ceil(F/2) - 1 predictions (at least 3 frames are needed).

Where this differs from VBench: frames are decoded by ffmpeg through imageio (VBench: OpenCV; their YUV -> RGB
conversions may round a pixel differently); pairs go through the network in batches (the same prediction up to
float rounding); a frame side below 128 pixels is padded up to 128 (at 64 px AMT-S's correlation pyramid ends at
1x1 and VBench's score is NaN), which only the tiny test videos need; VBench downsizes frames on GPUs with little
memory (480x720 frames need about 3 GB), this code never does.
"""
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoints import load_strict, read_wrapped_state_dict
from .amt import AMTS

DIVISOR = 16
MIN_SIDE = 128
PAIR_BATCH = 4
MIDDLE = 0.5


def load_amt_s(path: str, device: str) -> AMTS:
    """AMT-S with the weights of VBench's `amt-s.pth` (under its 'state_dict' key), loaded strictly."""
    model = AMTS()
    load_strict(model, read_wrapped_state_dict(path), "AMT-S")
    return model.to(device).eval()


def padding(height: int, width: int) -> tuple:
    """(left, right, top, bottom) as VBench's InputPadder (to a multiple of 16, the extra half before), each side
    at least MIN_SIDE."""
    pads = []
    for side in (width, height):
        total = max(-(-side // DIVISOR) * DIVISOR, MIN_SIDE) - side
        pads += [total // 2, total - total // 2]
    return tuple(pads)


@torch.no_grad()
def interpolated_odd_frames(model: AMTS, frames: torch.Tensor, batch_size: int = PAIR_BATCH,
                            description: str | None = None) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (ceil(F/2) - 1, H, W, 3) uint8: AMT-S's frame 2i+1 from frames 2i and 2i+2."""
    device = next(model.parameters()).device
    height, width = frames.shape[1:3]
    left, right, top, bottom = pad = padding(height, width)
    evens = frames[0::2]
    predictions = []
    for start in tqdm(range(0, len(evens) - 1, batch_size), desc=description, unit="batch",
                      disable=description is None, leave=False):
        pair_ends = evens[start:start + batch_size + 1].permute(0, 3, 1, 2).to(device).float() / 255.0
        pair_ends = F.pad(pair_ends, pad, mode="replicate")
        img0, img1 = pair_ends[:-1], pair_ends[1:]
        middle = model(img0, img1, torch.full((len(img0), 1, 1, 1), MIDDLE, device=device))
        middle = middle[:, :, top:top + height, left:left + width]
        predictions.append((middle * 255.0).permute(0, 2, 3, 1).cpu().clip(0, 255).to(torch.uint8))
    return torch.cat(predictions)


def smoothness_from_predictions(frames: torch.Tensor, predictions: torch.Tensor) -> float:
    """(255 - mean |odd frame - its prediction|) / 255, the mean first per frame, then over frames."""
    originals = frames[1::2][:len(predictions)].numpy().astype(np.int16)
    differences = np.abs(originals - predictions.numpy().astype(np.int16))
    mean_difference = np.mean([np.mean(frame) for frame in differences])
    return float((255.0 - mean_difference) / 255.0)


def motion_smoothness(model: AMTS, frames: torch.Tensor, batch_size: int = PAIR_BATCH,
                      description: str | None = None) -> float:
    """VBench's motion smoothness of one video's (F, H, W, 3) uint8 frames (F >= 3)."""
    return smoothness_from_predictions(frames, interpolated_odd_frames(model, frames, batch_size, description))
