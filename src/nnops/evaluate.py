"""Scoring a model on each split, DVC plot rows, figures and the training-size learning curve.

Every metric comes from ``sklearn.metrics``. The scoring, diagnosis-report and figure functions
take arrays and return data (or a matplotlib ``Figure``); the file edges at the end of the module
(``read_split``, ``read_history``, ``write_plots``) read and write the stage's files, and MLflow
logging happens in ``pipelines/evaluate.py``. Scoring itself lives in :mod:`nnops.scoring`;
``reports/evaluation.json`` is ``evaluation_report``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nnops.config import TrainParams
from nnops.diagnose import Diagnosis
from nnops.errors import NnopsError
from nnops.io import atomic_path
from nnops.scoring import SplitScores, confusion_rows, predict_proba, score_split

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def history_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Turn history rows (one mapping per epoch) into columns of floats.

    Args:
        rows: rows as read from ``reports/train/history.csv``.
    """
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(float(value))
    return columns


def subset_indices(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Pick a seeded, class-stratified share of the rows (all rows for ``fraction`` 1.0).

    Args:
        y: class indices of all rows.
        fraction: the share to keep, in (0, 1].
        seed: the random seed.
    """
    n = len(y)
    if fraction >= 1.0:
        return np.arange(n)
    from sklearn.model_selection import train_test_split

    n_keep = max(int(round(fraction * n)), 1)
    classes = len(np.unique(y))
    stratify = y if n_keep >= classes and n - n_keep >= classes else None
    keep, _ = train_test_split(
        np.arange(n), train_size=n_keep, random_state=seed, stratify=stratify
    )
    return np.sort(keep)


def curve_point(
    fraction: float, train_size: int, train: SplitScores, val: SplitScores
) -> dict[str, float]:
    """One point of the training-size learning curve.

    Args:
        fraction: the share of the training data used.
        train_size: the number of training rows used.
        train: scores on those training rows.
        val: scores on the validation split.
    """
    return {
        "fraction": float(fraction),
        "train_size": int(train_size),
        "train_accuracy": train.accuracy,
        "val_accuracy": val.accuracy,
        "train_loss": train.loss,
        "val_loss": val.loss,
    }


def learning_curve(
    fit: Callable[[np.ndarray, np.ndarray], Any],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    fractions: Sequence[float],
    class_names: Sequence[str],
    seed: int,
) -> list[dict[str, float]]:
    """Retrain on growing shares of the training data and score each model on its share and on val.

    Args:
        fit: trains a fresh, seeded model on ``(x, y)`` and returns it.
        train: raw training features and labels.
        val: raw validation features and labels.
        fractions: shares of the training data, each in (0, 1].
        class_names: the name of each class index.
        seed: the seed for picking the subsets.
    """
    x_train, y_train = train
    x_val, y_val = val
    rows = []
    for fraction in sorted(fractions):
        idx = subset_indices(y_train, fraction, seed)
        model = fit(x_train[idx], y_train[idx])
        on_train = score_split(y_train[idx], predict_proba(model, x_train[idx]), class_names)
        on_val = score_split(y_val, predict_proba(model, x_val), class_names)
        log.info(
            "learning curve: %d rows (%.0f%%): train accuracy %.4f, val accuracy %.4f",
            len(idx),
            100 * fraction,
            on_train.accuracy,
            on_val.accuracy,
        )
        rows.append(curve_point(fraction, len(idx), on_train, on_val))
    return rows


def keras_fitter(
    params: TrainParams,
    preprocessing: Mapping[str, Any],
    n_classes: int,
    val: tuple[np.ndarray, np.ndarray],
) -> Callable[[np.ndarray, np.ndarray], Any]:
    """Return a function that trains the train stage's model, freshly seeded, on given rows.

    The model, optimizer, epochs and early stopping are those of ``params.train`` (through
    ``nnops.train.fit``), on one device without distribution and without backups.

    Args:
        params: the ``train`` params section.
        preprocessing: the preprocess stage's description of its scaling.
        n_classes: the number of classes.
        val: raw validation features and labels (for early stopping and the history).
    """
    import keras

    from nnops.distribute import configure_runtime
    from nnops.train import TrainData, fit

    local = params.model_copy(update={"distribute": "none"})
    runtime = configure_runtime(local)

    def fit_rows(x: np.ndarray, y: np.ndarray) -> Any:
        keras.utils.set_random_seed(local.seed)  # every share starts from the same seed
        data = TrainData(x, y, val[0], val[1], n_classes, preprocessing)
        model, _ = fit(data, local, runtime, backup_dir=None)
        return model

    return fit_rows


def curve_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
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
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, y in series.items():
        ax.plot(list(x), list(y), marker="o", markersize=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str):
    """Draw a confusion matrix with counts in the cells (rows: actual, columns: predicted).

    Args:
        matrix: counts, shape (classes, classes).
        class_names: the name of each class index.
        title: the chart title.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(class_names)
    size = min(4 + 0.45 * k, 14)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(
        np.asarray(matrix), display_labels=[str(c) for c in class_names]
    )
    display.plot(ax=ax, colorbar=False, values_format="d", xticks_rotation="vertical")
    ax.set_title(title)
    return fig


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested numeric metrics to dotted names (``test.accuracy``), as DVC shows them.

    Args:
        metrics: the nested metrics, e.g. the content of ``reports/metrics.json``.
        prefix: the dotted prefix of this level.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def evaluation_report(
    scores: Mapping[str, SplitScores],
    class_names: Sequence[str],
    fit: Diagnosis,
    curve: list[dict[str, float]] | None,
) -> dict[str, Any]:
    """Assemble ``reports/evaluation.json``: test per-class table and confusion matrix up front.

    Args:
        scores: the scores of each split.
        class_names: the name of each class index.
        fit: the diagnosis.
        curve: the training-size learning curve rows, or None when it was not computed.
    """
    test = scores["test"]
    return {
        "class_names": [str(c) for c in class_names],
        "per_class": test.per_class,
        "confusion_matrix": test.confusion_matrix,
        "verdict": fit.verdict,
        "evidence": list(fit.reasons),
        "recommended_action": fit.action,
        "fit": fit.to_dict(),
        "splits": {
            name: {
                **s.headline(),
                "n": s.n,
                "per_class": s.per_class,
                "confusion_matrix": s.confusion_matrix,
            }
            for name, s in scores.items()
        },
        "learning_curve": curve,
    }


# --- File edges used by pipelines/evaluate.py (and other stages reading the same files) ---------


def read_history(path: str | Path) -> dict[str, list[float]]:
    """Read the per-epoch history CSV of the train stage into columns.

    Args:
        path: ``reports/train/history.csv``.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise NnopsError(f"{path}: file not found (did the train stage run?)") from None
    try:
        return history_columns(rows)
    except ValueError as exc:
        raise NnopsError(f"{path}: non-numeric value ({exc})") from None


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_plots(
    out: str | Path,
    history: Mapping[str, Sequence[float]],
    test: SplitScores,
    class_names: Sequence[str],
    curve: list[dict[str, float]] | None,
    y_test: np.ndarray,
    y_pred: np.ndarray,
) -> list[Path]:
    """Write the DVC plot files and PNG figures; return the PNG paths.

    Args:
        out: the plots directory (``reports/plots``).
        history: per-epoch columns from the train stage.
        test: the test split's scores.
        class_names: the name of each class index.
        curve: the training-size learning curve rows (a PNG is drawn from two points on).
        y_test: true test class indices.
        y_pred: predicted test class indices.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(
        out / "confusion_test.csv",
        confusion_rows(y_test, y_pred, class_names),
        ("actual", "predicted"),
    )
    epochs = history.get("epoch", [])
    offset = 1 if epochs and epochs[0] == 0 else 0
    x = [int(e) + offset for e in epochs]
    figures = []
    for metric, label in (("loss", "Loss"), ("accuracy", "Accuracy")):
        if metric in history and f"val_{metric}" in history:
            fig = curve_figure(
                x,
                {"train": history[metric], "validation": history[f"val_{metric}"]},
                f"{label} per epoch (train vs validation)",
                "epoch",
                metric,
            )
            figures.append(_save(fig, out / f"{metric}.png"))
    fig = confusion_figure(test.confusion_matrix, class_names, "Test confusion matrix")
    figures.append(_save(fig, out / "confusion_test.png"))
    if curve:
        _write_csv(out / "learning_curve.csv", curve, list(curve[0]))
    if curve and len(curve) > 1:
        fig = curve_figure(
            [r["train_size"] for r in curve],
            {
                "train": [r["train_accuracy"] for r in curve],
                "validation": [r["val_accuracy"] for r in curve],
            },
            "Accuracy against training-set size",
            "training rows",
            "accuracy",
        )
        figures.append(_save(fig, out / "learning_curve.png"))
    return figures
