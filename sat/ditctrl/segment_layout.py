"""Window ("segment") layout of a multi-prompt long video (docs/method.md, "Window layout").

A pure function of the prompt count and the tiling settings; all sizes are in latent frames.
"""
from dataclasses import dataclass


def video_frames(latent_frames: int) -> int:
    """Decoded frames of `latent_frames` latent frames (the VAE's 4× temporal compression, the first frame alone)."""
    return 4 * (latent_frames - 1) + 1


@dataclass(frozen=True)
class WindowCondition:
    """Conditioning of one window: a mix of two prompts' embeddings, weight `w_first` on `first`.

    Every window's unconditional embedding is zeros (the original picks one prompt's, all zeros).
    """
    first: int
    second: int
    w_first: float

    @property
    def is_base(self) -> bool:
        return self.w_first == 1.0


@dataclass(frozen=True)
class SegmentLayout:
    tile: int                      # window length
    overlap: int                   # frames shared by adjacent windows
    starts: tuple                  # first latent frame of each window
    conditions: tuple              # WindowCondition per window
    base_windows: tuple            # first window of each prompt (the isolated baseline's window)

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def length(self) -> int:
        """Latent frames of the long video."""
        return self.starts[-1] + self.tile

    @property
    def video_frames(self) -> int:
        return video_frames(self.length)

    def window(self, w: int) -> slice:
        return slice(self.starts[w], self.starts[w] + self.tile)


def segment_layout(num_prompts: int, tile: int, overlap: int, num_transition_blocks: int,
                   longer_mid_segment: int = 0) -> SegmentLayout:
    """Windows, their conditioning and the long latent length.

    Each prompt gets one window (middle prompts 1 + longer_mid_segment when there are more than
    two prompts); between consecutive prompts sit `num_transition_blocks` windows whose text
    embedding interpolates linearly between the two.

    >>> rose = segment_layout(3, tile=13, overlap=9, num_transition_blocks=2)
    >>> rose.num_windows, rose.length, rose.video_frames, rose.starts
    (7, 37, 145, (0, 4, 8, 12, 16, 20, 24))
    >>> [round(c.w_first, 3) for c in rose.conditions[:4]], rose.base_windows
    ([1.0, 0.667, 0.333, 1.0], (0, 3, 6))
    """
    if num_prompts < 1:
        raise ValueError("at least one prompt is needed")
    if tile < 1:
        raise ValueError(f"sampling_num_frames must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap_size ({overlap}) must be >= 0 and smaller than the tile sampling_num_frames ({tile})")
    if num_transition_blocks < 0 or longer_mid_segment < 0:
        raise ValueError("num_transition_blocks and longer_mid_segment must be >= 0")

    conditions, base_windows = [], []
    for p in range(num_prompts):
        base_windows.append(len(conditions))
        is_middle = 0 < p < num_prompts - 1
        repeats = 1 + (longer_mid_segment if is_middle else 0)
        conditions += [WindowCondition(p, p, 1.0)] * repeats
        if p < num_prompts - 1:
            for j in range(num_transition_blocks):
                w_second = (j + 1) / (num_transition_blocks + 1)
                w_first = 1 - w_second
                conditions.append(WindowCondition(p, p + 1, w_first))

    stride = tile - overlap
    layout = SegmentLayout(tile, overlap, tuple(w * stride for w in range(len(conditions))), tuple(conditions),
                           tuple(base_windows))
    if layout.length % 2 == 0:
        raise ValueError(f"the long latent has an even length ({layout.length} frames); the VAE decodes 1 + 2k "
                         f"latent frames (the original silently drops the last one): change overlap_size or "
                         f"num_transition_blocks")
    return layout
