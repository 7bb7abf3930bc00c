"""Where the model fails: metrics per slice of the test set and per class, with laggards flagged.

A slice is every test row sharing one value of a slice column (csv sources: the
``slice__<column>`` arrays of ``data/processed``). A slice, or a class judged by its recall, is
flagged when its accuracy falls below the overall accuracy by more than ``explain.slice_max_gap``.
:func:`slice_report` turns them into the explain stage's ``slices.json`` and ``slices.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nnops.config import ExplainParams
from nnops.errors import NnopsError

log = logging.getLogger(__name__)

SLICE_PREFIX = "slice__"
# The columns of slices.csv, one row per slice value and per class.
CSV_COLUMNS = ("column", "value", "support", "accuracy", "f1_macro", "gap", "flagged")


@dataclass(frozen=True)
class SliceMetric:
    """Metrics of the test rows that share one value of one slice column (or one class)."""

    column: str
    value: str
    support: int
    accuracy: float
    f1_macro: float
    gap: float  # overall accuracy minus this slice's accuracy
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return asdict(self)


def slice_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pick the ``slice__<column>`` arrays out of a loaded ``.npz`` file, keyed by column.

    Args:
        arrays: the arrays of one processed split.
    """
    return {
        key.removeprefix(SLICE_PREFIX): np.asarray(arrays[key])
        for key in arrays
        if key.startswith(SLICE_PREFIX)
    }


def select_slices(
    available: Mapping[str, np.ndarray], requested: Sequence[str], source: str = "data/processed"
) -> dict[str, np.ndarray]:
    """Return the requested slice columns, failing with the available names for an unknown one.

    Args:
        available: slice arrays keyed by column name.
        requested: the columns of ``explain.slice_by``.
        source: where the arrays came from, for the error message.
    """
    missing = [c for c in requested if c not in available]
    if missing:
        have = ", ".join(sorted(available)) or "none"
        raise NnopsError(
            f"explain.slice_by: column(s) {', '.join(map(repr, missing))} not found in {source} "
            f"(available slice columns: {have}); slice columns come from csv columns listed in "
            "data.exclude_columns"
        )
    return {c: available[c] for c in requested}


def _accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    if len(y_true) == 0:
        return 0.0, 0.0
    labels = np.union1d(y_true, y_pred)
    f1 = f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return float(accuracy_score(y_true, y_pred)), float(f1)


def slice_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    slices: Mapping[str, np.ndarray],
    max_gap: float,
) -> list[SliceMetric]:
    """Accuracy, macro F1 and support for every value of every slice column.

    Rows come out per column in the order given, worst accuracy first within a column.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        slices: one array of values per slice column, aligned with ``y_true``.
        max_gap: how far below the overall accuracy a slice may fall before it is flagged.
    """
    overall, _ = _accuracy_f1(y_true, y_pred)
    rows: list[SliceMetric] = []
    for column, values in slices.items():
        values = np.asarray(values).astype(str)
        if len(values) != len(y_true):
            raise NnopsError(
                f"slice column {column!r} has {len(values)} values for {len(y_true)} test rows"
            )
        per_value = []
        for value in np.unique(values):
            mask = values == value
            acc, f1 = _accuracy_f1(y_true[mask], y_pred[mask])
            gap = overall - acc
            per_value.append(
                SliceMetric(column, str(value), int(mask.sum()), acc, f1, gap, gap > max_gap)
            )
        rows.extend(sorted(per_value, key=lambda m: (m.accuracy, m.value)))
    flagged = sum(m.flagged for m in rows)
    log.info("%d slice(s) over %d column(s), %d flagged", len(rows), len(slices), flagged)
    return rows


def class_recalls(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], max_gap: float
) -> list[SliceMetric]:
    """Per-class recall as a slice table (column ``class``), worst recall first.

    A class's "accuracy" here is its recall: the share of its test examples predicted right.
    Its F1 is the class's own F1 score.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        class_names: one name per class index.
        max_gap: how far below the overall accuracy a class's recall may fall before it is flagged.
    """
    from sklearn.metrics import f1_score, recall_score

    labels = np.arange(len(class_names))
    overall, _ = _accuracy_f1(y_true, y_pred)
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    support = np.bincount(np.asarray(y_true, dtype=int), minlength=len(labels))
    rows = [
        SliceMetric(
            "class",
            str(class_names[c]),
            int(support[c]),
            float(recall[c]),
            float(f1[c]),
            float(overall - recall[c]),
            bool(support[c] > 0 and overall - recall[c] > max_gap),
        )
        for c in labels
    ]
    return sorted(rows, key=lambda m: (m.accuracy, m.value))


def summarize(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    slices: list[SliceMetric],
    classes: list[SliceMetric],
    max_gap: float,
) -> dict[str, Any]:
    """The slice report as one JSON-friendly dict.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        slices: per-slice metrics (may be empty).
        classes: per-class recall rows.
        max_gap: the flagging threshold used.
    """
    overall, f1 = _accuracy_f1(y_true, y_pred)
    return {
        "overall": {"accuracy": overall, "f1_macro": f1, "support": int(len(y_true))},
        "max_gap": max_gap,
        "slices": [m.to_dict() for m in slices],
        "classes": [m.to_dict() for m in classes],
        "flagged_slices": [m.to_dict() for m in slices if m.flagged],
        "flagged_classes": [m.to_dict() for m in classes if m.flagged],
    }


def csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    """Render rows as CSV text (a header, then one line per row) in UTF-8.

    Args:
        rows: the rows, each holding at least ``columns``.
        columns: the columns, in order.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: r[c] for c in columns} for r in rows])
    return buf.getvalue().encode("utf-8")


def slice_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    chosen: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    params: ExplainParams,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Slice and per-class metrics of the test set: the summary and the files ``slices.json``
    and ``slices.csv``.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        chosen: the slice columns of ``explain.slice_by`` (from :func:`select_slices`).
        class_names: one name per class index.
        params: the ``explain`` params section.
    """
    slice_rows = slice_metrics(y_true, y_pred, chosen, params.slice_max_gap)
    class_rows = class_recalls(y_true, y_pred, class_names, params.slice_max_gap)
    summary = summarize(y_true, y_pred, slice_rows, class_rows, params.slice_max_gap)
    files = {
        "slices.json": (json.dumps(summary, indent=2) + "\n").encode("utf-8"),
        "slices.csv": csv_bytes([m.to_dict() for m in [*slice_rows, *class_rows]], CSV_COLUMNS),
    }
    return summary, files
