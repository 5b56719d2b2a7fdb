"""CSCV, the original's clip-similarity coefficient of variation: how evenly a video changes from frame to frame.

With f_i the L2-normalised CLIP feature of frame i and s_i = f_i · f_{i+1} the similarity of adjacent frames,
cv = std(s) / mean(s) · 10 (population std) and the score is 1 / (1 + cv): 1 for a video that changes at an even
pace (or not at all), lower the more unevenly it changes (a hard cut is one low s_i among high ones). A folder's
score is the mean over its videos. Computed in float64.
"""
import numpy as np

CV_SCALE = 10.0


def adjacent_similarities(features) -> np.ndarray:
    """(F, D) frame features -> (F - 1,) cosine similarities of adjacent frames."""
    features = np.asarray(features, dtype=np.float64)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    return np.sum(unit[:-1] * unit[1:], axis=1)


def cscv_from_similarities(similarities) -> float:
    similarities = np.asarray(similarities, dtype=np.float64)
    cv = np.std(similarities) / np.mean(similarities) * CV_SCALE
    return float(1.0 / (1.0 + cv))


def cscv_score(features) -> float:
    """The CSCV score of one video from its (F, D) frame features (F >= 3)."""
    return cscv_from_similarities(adjacent_similarities(features))
