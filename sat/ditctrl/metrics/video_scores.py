"""Every metric of one video from one read and one CLIP pass: the batch run's scoring of a video."""
from dataclasses import dataclass

import torch

from .clip_features import frame_features
from .cscv import adjacent_similarities, cscv_from_similarities
from .motion_smoothness import motion_smoothness
from .prompt_parts import PromptParts
from .text_similarity import TextSimilarity, video_text_similarity


@dataclass(frozen=True)
class MetricModels:
    clip: object        # a whole CLIPModel (its vision tower gives CSCV's features)
    tokenizer: object
    amt: object         # AMTS
    image_size: int
    clip_batch: int
    amt_batch: int


@dataclass(frozen=True)
class VideoScores:
    frames: int
    similarities: tuple       # adjacent-frame CLIP similarities (the curve)
    cscv: float
    motion_smoothness: float
    text: TextSimilarity


def score_video(models: MetricModels, frames: torch.Tensor, parts: PromptParts, name: str) -> VideoScores:
    """CSCV, motion smoothness and text similarity of (F, H, W, 3) uint8 frames whose prompts are `parts`."""
    pooled = frame_features(models.clip, frames, models.image_size, models.clip_batch, f"{name}: CLIP")
    similarities = adjacent_similarities(pooled.numpy())
    return VideoScores(len(frames), tuple(float(s) for s in similarities), cscv_from_similarities(similarities),
                       motion_smoothness(models.amt, frames, models.amt_batch, f"{name}: AMT-S"),
                       video_text_similarity(models.clip, models.tokenizer, pooled, parts))
