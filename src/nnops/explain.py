"""What the model looks at: attribution maps for image data, permutation importances for tables.

Image-like sources get integrated gradients (or gradient x input, :mod:`nnops.attribution`)
averaged per class over correctly classified test examples, and a grid of the test examples the
model got wrong with the most confidence. Tabular sources get scikit-learn's permutation
importance on the test set. Slice and per-class metrics come from
:mod:`nnops.slices`, figures from :mod:`nnops.plots`. The test split's probabilities are the ones
the evaluate stage computed (``reports/predictions.npz``), so the test set is scored once.
The file edges at the end (``read_test``, ``model_and_predictions``, ``write_files``) read and
write the stage's files.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnops import plots
from nnops import slices as sl
from nnops.attribution import ClassAttribution, class_attributions
from nnops.catalog import load_model, read_predictions, read_split_arrays
from nnops.config import ExplainParams
from nnops.errors import NnopsError
from nnops.io import atomic_path, file_sha256
from nnops.scoring import predict_proba

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Misclassified:
    """One test example the model got wrong."""

    index: int
    true_label: int
    predicted_label: int
    confidence: float


@dataclass(frozen=True)
class FeatureImportance:
    """Accuracy lost when one feature's test values are shuffled."""

    feature: str
    importance_mean: float
    importance_std: float


def most_confident_errors(y: np.ndarray, probs: np.ndarray, k: int) -> list[Misclassified]:
    """The ``k`` misclassified examples with the highest predicted-class probability.

    Args:
        y: true class indices.
        probs: the model's probabilities.
        k: how many to return.
    """
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-conf[wrong], kind="stable")][:k]
    return [Misclassified(int(i), int(y[i]), int(pred[i]), float(conf[i])) for i in order]


class _KerasClassifier:
    """The least scikit-learn needs to score a fitted Keras model: ``fit`` and ``predict``."""

    _estimator_type = "classifier"

    def __init__(self, model: Any) -> None:
        self.model = model

    def fit(self, x: np.ndarray, y: np.ndarray) -> _KerasClassifier:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return predict_proba(self.model, np.asarray(x, dtype=np.float32)).argmax(axis=1)


def _accuracy(estimator: _KerasClassifier, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(estimator.predict(x) == y))


def permutation_importances(
    model: Any,
    x_raw: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    repeats: int,
    seed: int,
) -> list[FeatureImportance]:
    """Test-accuracy drop per shuffled feature, most important first.

    Args:
        model: a Keras model taking raw input and returning probabilities.
        x_raw: raw test inputs, shape (n, d).
        y: true class indices.
        feature_names: one name per column of ``x_raw``.
        repeats: shuffles per feature.
        seed: seed for the shuffles.
    """
    from sklearn.inspection import permutation_importance

    if len(feature_names) != x_raw.shape[1]:
        raise NnopsError(f"{len(feature_names)} feature names for {x_raw.shape[1]} feature columns")
    result = permutation_importance(
        _KerasClassifier(model),
        np.asarray(x_raw, dtype=np.float32),
        np.asarray(y),
        scoring=_accuracy,
        n_repeats=repeats,
        random_state=seed,
    )
    items = [
        FeatureImportance(str(name), float(m), float(s))
        for name, m, s in zip(
            feature_names, result.importances_mean, result.importances_std, strict=True
        )
    ]
    return sorted(items, key=lambda f: (-f.importance_mean, f.feature))


def attribution_grid_png(attributions: Sequence[ClassAttribution], method: str) -> bytes:
    """One tile per class: red pushes towards the class, blue away from it.

    Args:
        attributions: per-class mean attributions.
        method: the attribution method, for the title.
    """
    titles = [f"{a.class_name} (n={a.n_examples})" for a in attributions]
    fig = plots.attribution_grid([a.attribution for a in attributions], titles, method)
    return plots.png_bytes(fig)


def misclassified_grid_png(
    errors: Sequence[Misclassified],
    x_raw: np.ndarray,
    image_shape: Sequence[int],
    class_names: Sequence[str],
) -> bytes:
    """The most confidently misclassified test examples with their true and predicted labels.

    Args:
        errors: the examples to draw, most confident first.
        x_raw: raw test inputs, shape (n, d).
        image_shape: the shape of one example as an image.
        class_names: one name per class.
    """
    shape = tuple(int(s) for s in image_shape)
    images = [x_raw[e.index].reshape(shape) for e in errors]
    titles = [
        f"true {class_names[e.true_label]}\npred {class_names[e.predicted_label]} "
        f"({e.confidence:.2f})"
        for e in errors
    ]
    fig = plots.image_grid(images, titles, "Most confident mistakes on the test set")
    return plots.png_bytes(fig)


def importance_chart_png(importances: Sequence[FeatureImportance]) -> bytes:
    """Horizontal bars of the accuracy drop per feature, most important on top.

    Args:
        importances: sorted most important first.
    """
    fig = plots.importance_chart(
        [f.feature for f in importances],
        [f.importance_mean for f in importances],
        [f.importance_std for f in importances],
    )
    return plots.png_bytes(fig)


@dataclass(frozen=True)
class Explanation:
    """Everything the explain stage writes: a JSON summary and named files (PNG, CSV, JSON)."""

    summary: dict[str, Any]
    files: dict[str, bytes]


def explain_test_set(
    model: Any,
    test: Mapping[str, np.ndarray],
    probs: np.ndarray,
    meta: Mapping[str, Any],
    params: ExplainParams,
    seed: int,
) -> Explanation:
    """Attributions or importances, plus slice and per-class metrics, for the test split.

    Args:
        model: a Keras model taking raw input and returning probabilities (unused, and may be
            None, when ``params.enabled`` is false).
        test: the arrays of ``test.npz`` (``x_raw``, ``y`` and any ``slice__<column>``).
        probs: the model's class probabilities for the test rows (evaluate's hand-over).
        meta: ``data/processed/meta.json``.
        params: the ``explain`` params section.
        seed: seed for the permutation shuffles.
    """
    x_raw = np.asarray(test["x_raw"], dtype=np.float32)
    y = np.asarray(test["y"]).astype(np.int64)
    class_names = [str(c) for c in meta.get("class_names") or range(probs.shape[1])]
    chosen = sl.select_slices(sl.slice_arrays(test), params.slice_by)
    slice_summary, files = sl.slice_report(y, probs.argmax(axis=1), chosen, class_names, params)
    image_shape = meta.get("image_shape")
    summary: dict[str, Any] = {
        "enabled": params.enabled,
        "kind": "attribution" if image_shape else "permutation",
        "source": meta.get("source"),
        "n_test": int(len(y)),
        "test_accuracy": slice_summary["overall"]["accuracy"],
        "slice_by": list(params.slice_by),
        "flagged_slices": len(slice_summary["flagged_slices"]),
        "flagged_classes": len(slice_summary["flagged_classes"]),
    }
    if not params.enabled:
        summary["kind"] = "disabled"
    elif image_shape:
        attrs = class_attributions(
            model, x_raw, y, probs, class_names, image_shape,
            params.samples, params.method, params.steps,
        )  # fmt: skip
        errors = most_confident_errors(y, probs, params.errors)
        files["attributions.png"] = attribution_grid_png(attrs, params.method)
        files["misclassified.png"] = misclassified_grid_png(errors, x_raw, image_shape, class_names)
        files["attributions.npz"] = _npz([a.attribution for a in attrs])
        summary.update(
            method=params.method,
            steps=params.steps if params.method == "integrated_gradients" else None,
            examples_per_class={a.class_name: a.n_examples for a in attrs},
            misclassified=[
                {
                    "index": e.index,
                    "true": class_names[e.true_label],
                    "predicted": class_names[e.predicted_label],
                    "confidence": e.confidence,
                }
                for e in errors
            ],
        )
    else:
        names = meta.get("feature_names") or [f"f{i}" for i in range(x_raw.shape[1])]
        imps = permutation_importances(model, x_raw, y, names, params.repeats, seed)
        fields = list(FeatureImportance.__dataclass_fields__)
        rows = [{"rank": i + 1, **{k: getattr(f, k) for k in fields}} for i, f in enumerate(imps)]
        files["importances.png"] = importance_chart_png(imps)
        files["importances.csv"] = sl.csv_bytes(rows, ["rank", *fields])
        summary.update(method="permutation_importance", repeats=params.repeats)
        summary["importances"] = rows
    summary["files"] = sorted([*files, "explain.json"])
    files["explain.json"] = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()
    return Explanation(summary, files)


def _npz(maps: Sequence[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"class_{i}": a for i, a in enumerate(maps)})
    return buf.getvalue()


# --- File edges used by pipelines/explain.py ------------------------------------------------


def read_test(path: str | Path, slice_by: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the arrays explain uses from ``test.npz`` (not the scaled copy ``x``), checking that
    every ``explain.slice_by`` column is there before any heavy import.

    Args:
        path: the processed ``test.npz``.
        slice_by: ``explain.slice_by``.
    """
    path = Path(path)
    test = read_split_arrays(path, ("x_raw", "y"), prefix=sl.SLICE_PREFIX)
    sl.select_slices(sl.slice_arrays(test), slice_by, str(path.parent))
    return test


def model_and_predictions(
    model_path: str | Path,
    predictions: str | Path,
    test: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    enabled: bool,
) -> tuple[Any, np.ndarray]:
    """The model (None when explanations are off and not needed) and its test probabilities.

    The probabilities are evaluate's hand-over when it was made from this model and data, so
    the test split is scored once; otherwise (explain run on its own) they are computed here.

    Args:
        model_path: ``models/model.keras``.
        predictions: ``reports/predictions.npz``.
        test: the arrays from :func:`read_test`.
        meta: ``data/processed/meta.json``.
        enabled: ``explain.enabled``: attributions need the model.
    """
    if not Path(model_path).is_file():
        raise NnopsError(f"{model_path}: model file not found (did the train stage run?)")
    sha = file_sha256(model_path)
    probs = read_predictions(predictions, sha, str(meta.get("data_hash", "")), len(test["y"]))
    model = load_model(model_path) if enabled or probs is None else None
    if probs is None:
        log.info("%s absent or from another model: scoring the test split here", predictions)
        probs = predict_proba(model, np.asarray(test["x_raw"], dtype=np.float32))
    else:
        log.info("test predictions from %s (model %s)", predictions, sha[:12])
    return model, probs


def write_files(out: str | Path, files: Mapping[str, bytes]) -> None:
    """Write the explanation's files into ``out`` and remove files a previous run left there
    (e.g. attribution grids from an image run before a csv run).

    Args:
        out: ``reports/explain``.
        files: file name -> content.
    """
    out = Path(out)
    for name, content in files.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(content)
    for stale in out.iterdir():
        if stale.is_file() and stale.name not in files:
            stale.unlink()
    log.info("wrote %s to %s", ", ".join(sorted(files)), out)
