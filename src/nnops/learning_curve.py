"""Accuracy against training-set size: retrain the train stage's model on shares of its data.

Set ``evaluate.learning_curve`` (e.g. ``[0.1, 0.25, 0.5, 1.0]``) and the evaluate stage imports
this module, retrains a fresh, seeded model per share through ``nnops.train.fit`` (the train
stage's own code path) and scores each with :mod:`nnops.scoring`. Without it the curve holds one
point, the evaluated model itself, and nothing here runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nnops.config import TrainParams
from nnops.errors import NnopsError
from nnops.evaluate import EvaluationInputs, curve_point
from nnops.scoring import predict_proba, score_split

log = logging.getLogger(__name__)


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


def training_size_curve(
    params: TrainParams, fractions: Sequence[float], inputs: EvaluationInputs
) -> list[dict[str, float]]:
    """The learning curve of ``evaluate.learning_curve`` for the evaluate stage's inputs.

    Args:
        params: the ``train`` params section.
        fractions: ``evaluate.learning_curve``.
        inputs: what ``nnops.evaluate.read_inputs`` read.
    """
    if not inputs.preprocessing:
        raise NnopsError(
            "evaluate.learning_curve retrains the model and needs data/processed/"
            "preprocessing.json; rerun preprocess (dvc repro preprocess)"
        )
    val = inputs.splits["val"]
    fitter = keras_fitter(params, inputs.preprocessing, len(inputs.class_names), val)
    train = inputs.splits["train"]
    return learning_curve(fitter, train, val, fractions, inputs.class_names, params.seed)
