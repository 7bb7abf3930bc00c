"""The one place a model is scored: class probabilities, headline scores, per-class tables.

Every metric comes from ``sklearn.metrics``. evaluate, explain, register and predict all call
:func:`predict_proba` and :func:`score_split` from here, so a number means the same in each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CHUNK_ROWS = 8192  # rows per forward pass: bounded memory at MNIST scale

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitScores:
    """The scores of one split: headline numbers, a per-class table and the confusion matrix."""

    loss: float
    accuracy: float
    f1_macro: float
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    n: int

    def headline(self) -> dict[str, float]:
        """Return the numbers that go into ``reports/metrics.json``."""
        return {"loss": self.loss, "accuracy": self.accuracy, "f1_macro": self.f1_macro}


def predict_proba(model: Any, x: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Return the class probabilities a Keras model gives for raw rows ``x``, in chunks.

    A direct call per chunk avoids ``Model.predict``'s per-call set-up (a tf.data pipeline and
    a traced function), which dominates on small inputs.

    Args:
        model: a Keras model whose last layer is a softmax.
        x: raw, unscaled features, shape (n, d).
        chunk_rows: rows per forward pass.
    """
    if len(x) == 0:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype=np.float32)
    parts = [
        np.asarray(model(x[i : i + chunk_rows], training=False), dtype=np.float32)
        for i in range(0, len(x), chunk_rows)
    ]
    proba = np.concatenate(parts, axis=0)
    if proba.ndim != 2:
        raise ValueError(f"model output has shape {proba.shape}; expected (rows, classes)")
    return proba


def accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The share of rows whose most probable class is the true one (``sklearn.metrics``).

    Args:
        y_true: true class indices, shape (n,).
        proba: predicted probabilities, shape (n, classes).
    """
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(np.asarray(y_true), np.asarray(proba).argmax(axis=1)))


def per_class_table(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Per-class precision, recall, F1 and support, sorted by F1 from best to worst.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        class_names: the name of each class index.
    """
    from sklearn.metrics import precision_recall_fscore_support

    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    rows = [
        {
            "class": str(class_names[i]),
            "index": i,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in labels
    ]
    return sorted(rows, key=lambda r: (-r["f1"], r["index"]))


def score_split(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]) -> SplitScores:
    """Score one split from its true labels and predicted probabilities.

    Args:
        y_true: true class indices, shape (n,).
        proba: predicted probabilities, shape (n, classes).
        class_names: the name of each class index.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss

    y_true = np.asarray(y_true).astype(np.int64)
    k = len(class_names)
    if proba.shape != (len(y_true), k):
        raise ValueError(
            f"probabilities have shape {proba.shape}; expected ({len(y_true)}, {k}) "
            f"for {len(y_true)} rows and {k} classes"
        )
    # float32 softmax rows sum to one only within rounding (sklearn warns): renormalise.
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)
    y_pred = proba.argmax(axis=1)
    labels = list(range(k))
    return SplitScores(
        loss=float(log_loss(y_true, proba, labels=labels)),
        accuracy=float(accuracy_score(y_true, y_pred)),
        f1_macro=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        per_class=per_class_table(y_true, y_pred, class_names),
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        n=len(y_true),
    )


def confusion_rows(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> list[dict[str, str]]:
    """One ``{actual, predicted}`` row per example, the input of DVC's confusion template.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        class_names: the name of each class index.
    """
    names = [str(c) for c in class_names]
    return [
        {"actual": names[t], "predicted": names[p]} for t, p in zip(y_true, y_pred, strict=True)
    ]
