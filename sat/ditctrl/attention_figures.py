"""Figures of attention maps (docs/method.md), drawn with matplotlib's object API on the Agg canvas.

No pyplot: every figure is a standalone `Figure`, so nothing global is touched and nothing leaks.
Maps come in already normalised to [0, 1].
"""
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .output_files import write_file

TEMPORAL_COMPRESSION = 4  # CogVideoX VAE: latent frame f ≥ 1 decodes to video frames 4f-3 … 4f
TOKEN_PANEL_DPI = 150  # the original's dpi for the token panels; its other figures use matplotlib's default
OVERVIEW_DPI = 100


@dataclass(frozen=True)
class TokenMaps:
    """Video→text maps of tokens at latent `frame`, at one (step, layer): (len(labels), rows, cols) in [0, 1];
    `labels` name the tokens (e.g. 'token 1 "▁puppy"')."""
    step: int
    layer: int
    frame: int
    labels: tuple
    maps: np.ndarray


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(fig)
    return fig


def token_panels_figure(maps: np.ndarray, labels, path: str, dpi: float | None = None) -> str:
    """One magma panel per token map (n, rows, cols), stacked vertically, without axes, each titled with its label;
    dpi None: the original's 150."""
    count = len(maps)
    fig = _new_figure(2, 1.2 * count)  # 2 × 7.2 in for the original's 6 tokens
    axes = fig.subplots(count, 1, squeeze=False)[:, 0]
    fig.subplots_adjust(hspace=0.01)
    for ax, token_map, label in zip(axes, maps, labels):
        ax.imshow((255 * token_map).astype(np.uint8), cmap="magma")  # astype truncates, as the original
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    fig.tight_layout(pad=0.1, h_pad=0.1)
    return write_file(path, lambda temporary: fig.savefig(temporary, dpi=dpi or TOKEN_PANEL_DPI, bbox_inches="tight",
                                                          pad_inches=0, facecolor="white"))


def heatmap_figure(matrix: np.ndarray, path: str, title: str, axis_label: str, size_in: float,
                   grid: bool = False, dpi: float | None = None) -> str:
    """A square viridis heat map with a colour bar, both axes labelled `axis_label`; dpi None: the figure's."""
    fig = _new_figure(size_in, size_in)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis")
    fig.colorbar(image, ax=ax)
    ax.set_xlabel(axis_label)
    ax.set_ylabel(axis_label)
    ax.set_title(title)
    if grid:
        ax.grid(True, color="white", alpha=0.3)
    return write_file(path, lambda temporary: fig.savefig(temporary, dpi=dpi or "figure", bbox_inches="tight"))


def video_frame_of_latent(frame: int, num_video_frames: int) -> int:
    """The last decoded video frame of latent `frame`, clamped to the video."""
    return min(TEMPORAL_COMPRESSION * frame, num_video_frames - 1)


def overview_figure(records: list, frames_rgb, path: str, dpi: float | None = None) -> str:
    """One row per (step, layer) record: its token maps, overlaid on the decoded frame when given.

    `records`: `TokenMaps` list; `frames_rgb`: the decoded video (T, H, W, 3) uint8, or None to draw
    the maps alone.
    """
    if not records:
        raise ValueError("overview_figure needs at least one attention-map record, got none")
    if frames_rgb is not None:
        frames_rgb = np.asarray(frames_rgb)
        if frames_rgb.ndim != 4 or frames_rgb.shape[-1] != 3:
            raise ValueError(f"frames_rgb must be a (T, H, W, 3) video, got shape {frames_rgb.shape}")
    columns = max(len(record.labels) for record in records)
    fig = _new_figure(2 * columns, 1.6 * len(records))
    axes = fig.subplots(len(records), columns, squeeze=False)
    for row, record in zip(axes, records):
        background = None
        if frames_rgb is not None:
            background = frames_rgb[video_frame_of_latent(record.frame, len(frames_rgb))]
        for ax, label, token_map in zip(row, record.labels, record.maps):
            _draw_token_map(ax, token_map, background)
            ax.set_title(f"step {record.step}, layer {record.layer}, {label}", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout(pad=0.2)
    return write_file(path, lambda temporary: fig.savefig(temporary, dpi=dpi or OVERVIEW_DPI, facecolor="white"))


def _draw_token_map(ax, token_map: np.ndarray, background: np.ndarray | None) -> None:
    """The map alone, or stretched over the video frame at half opacity."""
    if background is None:
        ax.imshow(token_map, cmap="magma", vmin=0, vmax=1)
        return
    height, width = background.shape[:2]
    ax.imshow(background)
    ax.imshow(token_map, cmap="magma", vmin=0, vmax=1, alpha=0.5, interpolation="bilinear",
              extent=(0, width, height, 0))
