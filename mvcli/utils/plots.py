"""Figures of a confusion matrix: the matrix (counts and row-normalised) and per-class recall.

Rendered with matplotlib's Agg backend (no display needed) into RGB arrays that any logger
takes, or into PNG files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training nodes have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def row_normalised(matrix: torch.Tensor) -> torch.Tensor:
    """Each row (true class) divided by its count; rows of absent classes stay 0."""
    matrix = matrix.double()
    return matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)


def recall(matrix: torch.Tensor) -> torch.Tensor:
    """Per-class recall (diagonal / row sum); NaN for classes absent from the targets."""
    support = matrix.sum(dim=1).double()
    return torch.where(support > 0, matrix.diagonal().double() / support.clamp(min=1), np.nan)


def confusion_figure(matrix: torch.Tensor, names: Sequence[str], title: str) -> Figure:
    """Two panels: counts, and row-normalised (the share of each true class per prediction)."""
    size = max(4.0, 0.55 * len(names) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size), dpi=80, layout="constrained")
    panels = [(matrix.long(), "counts", "d"), (row_normalised(matrix), "row-normalised", ".2f")]
    for ax, (values, label, fmt) in zip(axes, panels, strict=True):
        data = values.numpy()
        ax.imshow(data, cmap="Blues", vmin=0, vmax=max(float(data.max()), 1e-9))
        ticks = range(len(names))
        ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} ({label})", fontsize=10)
        high = data.max() / 2
        for (i, j), value in np.ndenumerate(data):
            color = "white" if value > high else "black"
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7, color=color)
    return fig


def recall_figure(matrix: torch.Tensor, names: Sequence[str], title: str) -> Figure:
    """Bar chart of per-class recall; classes absent from the targets are marked n/a."""
    values = recall(matrix).numpy()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(names) + 2), 3.5), dpi=80)
    positions = np.arange(len(names))
    ax.bar(positions, np.nan_to_num(values), color="tab:blue")
    for x, value in zip(positions, values, strict=True):
        label = "n/a" if np.isnan(value) else f"{value:.2f}"
        ax.text(x, np.nan_to_num(value) + 0.02, label, ha="center", fontsize=7)
    ax.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall")
    ax.set_title(f"{title}: per-class recall", fontsize=10)
    fig.set_layout_engine("constrained")
    return fig


def to_array(fig: Figure) -> np.ndarray:
    """The figure as an HxWx3 uint8 RGB array; the figure is closed."""
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def save_png(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG; the figure is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
