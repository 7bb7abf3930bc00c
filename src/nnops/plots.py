"""The one home of matplotlib: every figure nnops draws, and the PNG writers they share.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot (no global figure registry,
no backend to choose, nothing to close), drawn on first use so that importing this module costs
nothing. ``pyplot()`` remains for callers that want the pyplot interface itself.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nnops.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
# The importance bar chart shows at most this many features (the table keeps all of them).
CHART_MAX_FEATURES = 30


def pyplot() -> Any:
    """Return ``matplotlib.pyplot`` on the headless Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _close(fig: Any) -> None:
    # Only pyplot keeps figures alive in a registry; a bare Figure is freed with its last reference.
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)


def png_bytes(fig: Any, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes (trimmed to its content) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _close(fig)
    return buf.getvalue()


def save_png(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically, close it and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _close(fig)
    return path


def _figure(width: float, height: float, layout: str | None = None) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


# --- evaluate: learning curves and the confusion matrix -------------------------------------


def curve_figure(
    x: Sequence[float],
    series: dict[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str,
) -> Figure:
    """Draw several lines against one x axis (train and validation in one chart).

    Args:
        x: the x values.
        series: label -> y values.
        title: the chart title.
        xlabel: the x-axis label.
        ylabel: the y-axis label.
    """
    fig = _figure(6, 4, layout="constrained")
    ax = fig.add_subplot()
    for label, y in series.items():
        ax.plot(list(x), list(y), marker="o", markersize=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def confusion_figure(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str
) -> Figure:
    """Draw a confusion matrix with counts in the cells (rows: actual, columns: predicted).

    Args:
        matrix: counts, shape (classes, classes).
        class_names: the name of each class index.
        title: the chart title.
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    size = min(4 + 0.45 * len(class_names), 14)
    fig = _figure(size, size, layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(
        np.asarray(matrix), display_labels=[str(c) for c in class_names]
    )
    display.plot(ax=ax, colorbar=False, values_format="d", xticks_rotation="vertical")
    ax.set_title(title)
    return fig


# --- explain: attribution maps, mistakes, feature importances --------------------------------


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 5) if n <= 10 else math.ceil(math.sqrt(n))
    return max(1, math.ceil(n / max(cols, 1))), max(cols, 1)


def _tiles(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = _figure(width, height)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def attribution_grid(maps: Sequence[np.ndarray], titles: Sequence[str], method: str) -> Figure:
    """One tile per class: red pushes towards the class, blue away from it.

    Args:
        maps: per-class mean attributions, each shaped like one image.
        titles: one tile title per map.
        method: the attribution method, for the title.
    """
    rows, cols = _grid(len(maps))
    fig, axes = _tiles(rows, cols, 2.0 * cols, 2.2 * rows + 0.4)
    for ax, attribution, title in zip(axes.ravel(), maps, titles, strict=False):
        img = attribution if attribution.ndim == 2 else attribution.sum(axis=-1)
        lim = float(np.abs(img).max()) or 1.0
        ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Mean {method.replace('_', ' ')} per class (correct test examples)", fontsize=10)
    return fig


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str], title: str) -> Figure:
    """Test examples drawn as images with a caption each (a notice when there are none).

    Args:
        images: each example shaped as an image (2-D, or 3-D with channels last).
        titles: one caption per image.
        title: the figure title.
    """
    if not images:
        fig = _figure(4, 1.2)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test examples", ha="center", va="center")
        return fig
    cols = min(len(images), 8)
    rows = math.ceil(len(images) / cols)
    fig, axes = _tiles(rows, cols, 1.5 * cols, 1.9 * rows + 0.4)
    for ax, img, caption in zip(axes.ravel(), images, titles, strict=False):
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim == 3:
            img = (img - img.min()) / (np.ptp(img) or 1.0)
            ax.imshow(img, interpolation="nearest")
        else:
            ax.imshow(img, cmap="gray_r", interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def importance_chart(names: Sequence[str], means: Sequence[float], stds: Sequence[float]) -> Figure:
    """Horizontal bars of the accuracy drop per feature, most important on top.

    Args:
        names: feature names, most important first.
        means: the mean accuracy drop of each.
        stds: its standard deviation over the shuffles.
    """
    shown = min(len(names), CHART_MAX_FEATURES)
    fig = _figure(6.5, 0.3 * shown + 1.2)
    ax = fig.add_subplot()
    ax.barh(
        list(names[:shown])[::-1],
        list(means[:shown])[::-1],
        xerr=list(stds[:shown])[::-1],
        color="#4472c4",
        ecolor="#333333",
    )
    ax.axvline(0.0, color="#999999", linewidth=0.8)
    ax.set_xlabel("test accuracy lost when the feature is shuffled")
    title = "Permutation feature importance"
    if len(names) > shown:
        title += f" (top {shown} of {len(names)})"
    ax.set_title(title, fontsize=10)
    return fig
