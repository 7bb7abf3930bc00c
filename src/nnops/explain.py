"""What the model looks at: attribution maps for image data, permutation importances for tables.

Image-like sources get integrated gradients (or gradient x input) computed with TensorFlow's
GradientTape on the raw input, averaged per class over correctly classified test examples, and
a grid of the test examples the model got wrong with the most confidence. Tabular sources get
scikit-learn's permutation importance on the test set. Figures come back as PNG bytes; writing
them is left to the stage.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nnops.config import EvaluateParams
from nnops.errors import NnopsError
from nnops.scoring import predict_proba

log = logging.getLogger(__name__)

Method = Literal["integrated_gradients", "gradient_x_input"]

# Rows pushed through the model at once; bounds memory, not a modelling choice.
CHUNK_ROWS = 8192
# The bar chart shows at most this many features (the table keeps all of them).
CHART_MAX_FEATURES = 30


@dataclass(frozen=True)
class ClassAttribution:
    """Mean attribution of one class over the correctly classified test examples of that class."""

    class_index: int
    class_name: str
    n_examples: int
    attribution: np.ndarray  # shaped like one image


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


def _target_gradients(model: Any, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Gradient of each row's target-class probability with respect to that row's input."""
    import tensorflow as tf

    xt = tf.convert_to_tensor(x, dtype=tf.float32)
    idx = tf.stack([tf.range(tf.shape(xt)[0]), tf.convert_to_tensor(target, tf.int32)], axis=1)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        probs = tf.cast(model(xt, training=False), tf.float32)
        picked = tf.gather_nd(probs, idx)
    return tape.gradient(picked, xt).numpy()


def integrated_gradients(
    model: Any,
    x: np.ndarray,
    target: np.ndarray,
    steps: int,
    baseline: np.ndarray | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """Integrated gradients of the target-class probability, one attribution row per input row.

    The path integral from ``baseline`` to ``x`` uses the midpoint rule with ``steps`` points;
    all interpolated rows of a chunk of examples go through the model in one batch.

    Args:
        model: a Keras model taking raw input and returning probabilities.
        x: raw inputs, shape (n, d).
        target: the class to explain for each row, shape (n,).
        steps: interpolation points along the path.
        baseline: the reference input, shape (d,); all zeros (a black image) when omitted.
        chunk_rows: interpolated rows per gradient pass.
    """
    if steps < 1:
        raise NnopsError(f"integrated gradients needs at least one step; received steps={steps}")
    x = np.asarray(x, dtype=np.float32)
    base = np.zeros(x.shape[1], np.float32) if baseline is None else baseline.astype(np.float32)
    alphas = ((np.arange(steps, dtype=np.float32) + 0.5) / steps)[:, None]
    per_chunk = max(1, chunk_rows // steps)
    out = np.zeros_like(x)
    for start in range(0, len(x), per_chunk):
        xs = x[start : start + per_chunk]
        n = len(xs)
        # (n, steps, d) -> (n * steps, d): every example's path in one batch.
        path = base + alphas[None, :, :] * (xs - base)[:, None, :]
        grads = _target_gradients(
            model, path.reshape(n * steps, -1), np.repeat(target[start : start + n], steps)
        )
        out[start : start + n] = (xs - base) * grads.reshape(n, steps, -1).mean(axis=1)
    return out


def gradient_x_input(
    model: Any, x: np.ndarray, target: np.ndarray, chunk_rows: int = CHUNK_ROWS
) -> np.ndarray:
    """Gradient of the target-class probability times the input, one row per input row.

    Args:
        model: a Keras model taking raw input and returning probabilities.
        x: raw inputs, shape (n, d).
        target: the class to explain for each row, shape (n,).
        chunk_rows: rows per gradient pass.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.zeros_like(x)
    for start in range(0, len(x), chunk_rows):
        xs = x[start : start + chunk_rows]
        out[start : start + len(xs)] = xs * _target_gradients(
            model, xs, target[start : start + len(xs)]
        )
    return out


def class_attributions(
    model: Any,
    x_raw: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    samples: int,
    method: Method,
    steps: int,
) -> list[ClassAttribution]:
    """Mean attribution map per class over up to ``samples`` correctly classified test examples.

    A class with no correct example gets an all-zero map and ``n_examples=0``.

    Args:
        model: a Keras model taking raw input and returning probabilities.
        x_raw: raw test inputs, shape (n, d).
        y: true class indices.
        probs: the model's probabilities for ``x_raw``.
        class_names: one name per class.
        image_shape: the shape of one example as an image, e.g. (8, 8).
        samples: the most examples averaged per class (the first ones in test order).
        method: ``integrated_gradients`` or ``gradient_x_input``.
        steps: interpolation points for integrated gradients.
    """
    shape = tuple(int(s) for s in image_shape)
    if math.prod(shape) != x_raw.shape[1]:
        raise NnopsError(
            f"image_shape {list(shape)} holds {math.prod(shape)} values but the data has "
            f"{x_raw.shape[1]} features"
        )
    pred = probs.argmax(axis=1)
    chosen = [np.flatnonzero((y == c) & (pred == c))[:samples] for c in range(len(class_names))]
    rows = np.concatenate(chosen) if chosen else np.zeros(0, dtype=int)
    targets = y[rows].astype(np.int32)
    if method == "integrated_gradients":
        attr = integrated_gradients(model, x_raw[rows], targets, steps)
    elif method == "gradient_x_input":
        attr = gradient_x_input(model, x_raw[rows], targets)
    else:
        raise NnopsError(
            f"evaluate.explain_method: received {method!r}; allowed: "
            "'integrated_gradients', 'gradient_x_input'"
        )
    result: list[ClassAttribution] = []
    offset = 0
    for c, idx in enumerate(chosen):
        block = attr[offset : offset + len(idx)]
        offset += len(idx)
        mean = block.mean(axis=0) if len(idx) else np.zeros(x_raw.shape[1], np.float32)
        result.append(ClassAttribution(c, str(class_names[c]), len(idx), mean.reshape(shape)))
    log.info("attributions (%s) over %d correctly classified test examples", method, len(rows))
    return result


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


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 5) if n <= 10 else math.ceil(math.sqrt(n))
    return max(1, math.ceil(n / max(cols, 1))), max(cols, 1)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attribution_grid_png(attributions: Sequence[ClassAttribution], method: str) -> bytes:
    """One tile per class: red pushes towards the class, blue away from it.

    Args:
        attributions: per-class mean attributions.
        method: the attribution method, for the title.
    """
    plt = _pyplot()
    rows, cols = _grid(len(attributions))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, item in zip(axes.ravel(), attributions, strict=False):
        img = item.attribution if item.attribution.ndim == 2 else item.attribution.sum(axis=-1)
        lim = float(np.abs(img).max()) or 1.0
        ax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"{item.class_name} (n={item.n_examples})", fontsize=9)
    fig.suptitle(f"Mean {method.replace('_', ' ')} per class (correct test examples)", fontsize=10)
    return _png(fig)


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
    plt = _pyplot()
    shape = tuple(int(s) for s in image_shape)
    if not errors:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified test examples", ha="center", va="center")
        return _png(fig)
    cols = min(len(errors), 8)
    rows = math.ceil(len(errors) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.9 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, err in zip(axes.ravel(), errors, strict=False):
        img = x_raw[err.index].reshape(shape)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim == 3:
            img = (img - img.min()) / (np.ptp(img) or 1.0)
            ax.imshow(img, interpolation="nearest")
        else:
            ax.imshow(img, cmap="gray_r", interpolation="nearest")
        ax.set_title(
            f"true {class_names[err.true_label]}\npred {class_names[err.predicted_label]} "
            f"({err.confidence:.2f})",
            fontsize=8,
        )
    fig.suptitle("Most confident mistakes on the test set", fontsize=10)
    return _png(fig)


def importance_chart_png(importances: Sequence[FeatureImportance]) -> bytes:
    """Horizontal bars of the accuracy drop per feature, most important on top.

    Args:
        importances: sorted most important first.
    """
    plt = _pyplot()
    shown = list(importances[:CHART_MAX_FEATURES])
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(shown) + 1.2))
    names = [f.feature for f in shown][::-1]
    means = [f.importance_mean for f in shown][::-1]
    stds = [f.importance_std for f in shown][::-1]
    ax.barh(names, means, xerr=stds, color="#4472c4", ecolor="#333333")
    ax.axvline(0.0, color="#999999", linewidth=0.8)
    ax.set_xlabel("test accuracy lost when the feature is shuffled")
    title = "Permutation feature importance"
    if len(importances) > len(shown):
        title += f" (top {len(shown)} of {len(importances)})"
    ax.set_title(title, fontsize=10)
    return _png(fig)


@dataclass(frozen=True)
class Explanation:
    """Everything the explain stage writes: a JSON summary and named files (PNG, CSV, JSON)."""

    summary: dict[str, Any]
    files: dict[str, bytes]


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> bytes:
    import csv

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{c: r[c] for c in columns} for r in rows])
    return buf.getvalue().encode("utf-8")


def explain_test_set(
    model: Any,
    test: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    params: EvaluateParams,
    seed: int,
) -> Explanation:
    """Attributions or importances, plus slice and per-class metrics, for the test split.

    Args:
        model: a Keras model taking raw input and returning probabilities.
        test: the arrays of ``test.npz`` (``x_raw``, ``y`` and any ``slice__<column>``).
        meta: ``data/processed/meta.json``.
        params: the ``evaluate`` params section.
        seed: seed for the permutation shuffles.
    """
    import json

    from nnops import slices as sl

    x_raw = np.asarray(test["x_raw"], dtype=np.float32)
    y = np.asarray(test["y"]).astype(np.int64)
    n_classes = int(model.outputs[0].shape[-1])
    class_names = [str(c) for c in meta.get("class_names") or range(n_classes)]
    chosen = sl.select_slices(sl.slice_arrays(test), params.slice_by)
    probs = predict_proba(model, x_raw)
    pred = probs.argmax(axis=1)
    slice_rows = sl.slice_metrics(y, pred, chosen, params.slice_max_gap)
    class_rows = sl.class_recalls(y, pred, class_names, params.slice_max_gap)
    slice_summary = sl.summarize(y, pred, slice_rows, class_rows, params.slice_max_gap)
    columns = ["column", "value", "support", "accuracy", "f1_macro", "gap", "flagged"]
    files = {
        "slices.json": (json.dumps(slice_summary, indent=2) + "\n").encode("utf-8"),
        "slices.csv": _csv([m.to_dict() for m in [*slice_rows, *class_rows]], columns),
    }
    image_shape = meta.get("image_shape")
    summary: dict[str, Any] = {
        "enabled": params.explain,
        "kind": "attribution" if image_shape else "permutation",
        "source": meta.get("source"),
        "n_test": int(len(y)),
        "test_accuracy": slice_summary["overall"]["accuracy"],
        "slice_by": list(params.slice_by),
        "flagged_slices": len(slice_summary["flagged_slices"]),
        "flagged_classes": len(slice_summary["flagged_classes"]),
    }
    if not params.explain:
        summary["kind"] = "disabled"
    elif image_shape:
        attrs = class_attributions(
            model,
            x_raw,
            y,
            probs,
            class_names,
            image_shape,
            params.explain_samples,
            params.explain_method,
            params.explain_steps,
        )
        errors = most_confident_errors(y, probs, params.explain_errors)
        files["attributions.png"] = attribution_grid_png(attrs, params.explain_method)
        files["misclassified.png"] = misclassified_grid_png(errors, x_raw, image_shape, class_names)
        files["attributions.npz"] = _npz([a.attribution for a in attrs])
        summary.update(
            method=params.explain_method,
            steps=params.explain_steps if params.explain_method == "integrated_gradients" else None,
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
        imps = permutation_importances(model, x_raw, y, names, params.explain_repeats, seed)
        rows = [
            {"rank": i + 1, **{k: getattr(f, k) for k in FeatureImportance.__dataclass_fields__}}
            for i, f in enumerate(imps)
        ]
        files["importances.png"] = importance_chart_png(imps)
        files["importances.csv"] = _csv(rows, ["rank", *FeatureImportance.__dataclass_fields__])
        summary.update(method="permutation_importance", repeats=params.explain_repeats)
        summary["importances"] = rows
    summary["files"] = sorted([*files, "explain.json"])
    files["explain.json"] = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()
    return Explanation(summary, files)


def _npz(maps: Sequence[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{f"class_{i}": a for i, a in enumerate(maps)})
    return buf.getvalue()
