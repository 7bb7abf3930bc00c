"""What training reads: the preprocess stage's train and validation splits, checked.

File names come from ``nnops.catalog``; the arrays are the raw features (the model scales them
itself) and the labels, with the preprocessing description the model's first layer is built from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnops import catalog
from nnops.errors import NnopsError
from nnops.io import read_json


@dataclass(frozen=True)
class TrainData:
    """Raw (unscaled) features and class indices for training and validation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    n_classes: int
    preprocessing: Mapping[str, Any]


def load_processed(folder: str | Path) -> tuple[TrainData, dict[str, Any], np.ndarray]:
    """Read ``data/processed``: raw train/val arrays, the preprocessing spec and the meta.

    Returns the training data, ``meta.json`` and the preprocessed training features (to check
    that the model's preprocessing layer reproduces them).

    Args:
        folder: the preprocess stage's output folder.
    """
    folder = Path(folder)
    train = catalog.read_split_arrays(catalog.split_path(folder, "train"), ("x_raw", "x", "y"))
    val = catalog.read_split_arrays(catalog.split_path(folder, "val"), ("x_raw", "x", "y"))
    meta = read_json(folder / catalog.PROCESSED_META)
    spec = read_json(folder / catalog.PREPROCESSING_JSON)
    n_classes = len(meta.get("class_names") or [])
    labels = np.concatenate([train["y"], val["y"]])
    if n_classes < 2:
        raise NnopsError(f"{folder / catalog.PROCESSED_META}: {n_classes} class(es); a classifier "
                         "needs at least two")  # fmt: skip
    if labels.min() < 0 or labels.max() >= n_classes:
        raise NnopsError(
            f"{folder / catalog.PROCESSED_META}: class_names lists {n_classes} classes but labels "
            f"range {labels.min()}..{labels.max()}"
        )
    if train["x_raw"].shape[1] != val["x_raw"].shape[1]:
        raise NnopsError(f"{folder}: train and val have different feature counts")
    has_val = len(val["y"]) > 0
    data = TrainData(
        x_train=train["x_raw"].astype("float32"),
        y_train=train["y"].astype("int64"),
        x_val=val["x_raw"].astype("float32") if has_val else None,
        y_val=val["y"].astype("int64") if has_val else None,
        n_classes=n_classes,
        preprocessing=spec,
    )
    return data, meta, train["x"]


def check_preprocessing(
    spec: Mapping[str, Any], x_raw: np.ndarray, x: np.ndarray, source: str | Path
) -> None:
    """Fail unless the model's preprocessing layer maps raw rows to the preprocessed rows.

    Args:
        spec: the preprocess stage's description of its scaling.
        x_raw: raw training rows.
        x: the same rows as the preprocess stage scaled them.
        source: where the spec came from, for the message.
    """
    import keras

    from nnops.model import preprocessing_layer

    rows = slice(0, min(len(x_raw), 512))
    layer = preprocessing_layer(spec, int(x_raw.shape[1]))
    mapped = x_raw[rows] if layer is None else keras.ops.convert_to_numpy(layer(x_raw[rows]))
    if mapped.shape != x[rows].shape or not np.allclose(mapped, x[rows], rtol=1e-4, atol=1e-4):
        worst = float(np.max(np.abs(mapped - x[rows]))) if mapped.shape == x[rows].shape else None
        raise NnopsError(
            f"{source}: the preprocessing it describes does not reproduce x from x_raw "
            f"(largest difference {worst:.3g}); the saved model would not take raw input"
            if worst is not None
            else f"{source}: x_raw and x differ in shape ({mapped.shape} vs {x[rows].shape})"
        )
