"""The metric figures, drawn with matplotlib's object API (no pyplot) and written through `write_file`.

* `tsne_figure`: the original's t-SNE scatter of a video's frame features; with prompt parts, points coloured by
  the prompt that owns the frame, frames of transition windows (owned by no prompt or by two) hollow and grey,
  and a thin line joining the points in frame order;
* `similarity_figure`: the similarity of adjacent frames over time for one or several videos, each prompt's part
  shaded in its colour and the transition windows hatched;
* `comparison_figure`: the batch run's methods side by side on each metric (mean and std over the cases).
"""
import textwrap

import numpy as np
from matplotlib.figure import Figure

from ..output_files import write_file
from .prompt_parts import PromptParts

TSNE_DPI = 300  # the original's
FIGURE_DPI = 150
TRANSITION_COLOUR = "0.55"


def _save(fig: Figure, path: str, dpi: int) -> str:
    return write_file(path, lambda temporary: fig.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight",
                                                          facecolor="white"))


def _colour(p: int):
    from matplotlib import colormaps

    return colormaps["tab10"](p % 10)


def _prompt_label(p: int, prompt: str, width: int = 60) -> str:
    return f"prompt {p + 1}: {textwrap.shorten(prompt, width, placeholder=' …')}"


def tsne_figure(points: np.ndarray, parts: PromptParts | None, path: str) -> str:
    """(F, 2) t-SNE coordinates of a video's frames -> PNG at `path`."""
    fig = Figure(figsize=(10, 6))
    ax = fig.subplots()
    if parts is None:
        ax.scatter(points[:, 0], points[:, 1], alpha=0.5, s=200)
    else:
        ax.plot(points[:, 0], points[:, 1], color="0.75", linewidth=0.8, zorder=1)
        labels = [parts.label(frame) for frame in range(len(points))]
        for p, prompt in enumerate(parts.prompts):
            mine = [frame for frame, label in enumerate(labels) if label == p]
            ax.scatter(points[mine, 0], points[mine, 1], alpha=0.5, s=200, color=_colour(p),
                       label=_prompt_label(p, prompt), zorder=2)
        between = [frame for frame, label in enumerate(labels) if label is None]
        if between:
            ax.scatter(points[between, 0], points[between, 1], s=200, facecolors="none", edgecolors=TRANSITION_COLOUR,
                       label="transition windows", zorder=2)
        for frame, name in ((0, "first frame"), (len(points) - 1, "last frame")):
            ax.annotate(name, points[frame], textcoords="offset points", xytext=(8, 8), fontsize=8)
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    ax.axis("off")
    return _save(fig, path, TSNE_DPI)


def _shade_parts(ax, parts: PromptParts) -> None:
    for p, frames in enumerate(parts.members):
        ax.axvspan(frames[0], frames[-1], color=_colour(p), alpha=0.12, linewidth=0,
                   label=_prompt_label(p, parts.prompts[p]))
    for index, frames in enumerate(parts.transitions):
        ax.axvspan(frames[0], frames[-1], facecolor="none", edgecolor=TRANSITION_COLOUR, hatch="//", linewidth=0,
                   alpha=0.5, label="transition windows" if index == 0 else None)


def similarity_figure(curves: list, parts: PromptParts | None, path: str) -> str:
    """`curves`: (label, (F - 1,) adjacent-frame similarities) per video, drawn between frames i and i + 1;
    `parts`: the prompt parts shaded behind them (e.g. the first video's)."""
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    if parts is not None:
        _shade_parts(ax, parts)
    for label, similarities in curves:
        ax.plot(np.arange(len(similarities)) + 0.5, similarities, linewidth=1.2, label=label)
    ax.set_xlabel("frame")
    ax.set_ylabel("CLIP similarity of adjacent frames")
    ax.set_xlim(0, max(len(similarities) for _, similarities in curves) + 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    return _save(fig, path, FIGURE_DPI)


def comparison_figure(summary: dict, metrics: list, path: str) -> str:
    """`summary[metric][method]` = (mean, std, count), `metrics` = (metric, title) -> one panel per metric, each
    method's mean as a point with its std as an error bar."""
    fig = Figure(figsize=(4 * len(metrics), 4))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (metric, title) in zip(axes, metrics):
        methods = list(summary.get(metric, {}))
        for m, method in enumerate(methods):
            mean, std, _ = summary[metric][method]
            ax.errorbar([m], [mean], yerr=[std], fmt="o", markersize=8, capsize=6, color=_colour(m))
        ax.set_xticks(range(len(methods)), methods, rotation=15)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, FIGURE_DPI)
