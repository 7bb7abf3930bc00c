"""Gradient attributions for image data: which pixels push the model towards a class.

Integrated gradients (or gradient x input) of the target-class probability, computed with
TensorFlow's GradientTape on the raw input, in batches of interpolated rows, and averaged per
class over correctly classified test examples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nnops.errors import NnopsError

log = logging.getLogger(__name__)

Method = Literal["integrated_gradients", "gradient_x_input"]

# Interpolated rows per gradient pass. It bounds memory, not a modelling choice: at MNIST scale
# the explain stage peaked ~200 MB higher with 8192 rows per pass and ~20 MB higher with 1024
# than with 512, at the same CPU time (bench/eval_scale.py; notes of issue 15).
GRADIENT_ROWS = 512


@dataclass(frozen=True)
class ClassAttribution:
    """Mean attribution of one class over the correctly classified test examples of that class."""

    class_index: int
    class_name: str
    n_examples: int
    attribution: np.ndarray  # shaped like one image


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
    chunk_rows: int = GRADIENT_ROWS,
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
    model: Any, x: np.ndarray, target: np.ndarray, chunk_rows: int = GRADIENT_ROWS
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
            f"explain.method: received {method!r}; allowed: "
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
