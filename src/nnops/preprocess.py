"""Split the validated raw table and fit the scaling the model will carry inside itself.

Every split keeps its raw features (``x_raw``) next to the scaled ones (``x``); the fitted
scaling goes to ``preprocessing.json`` in the form Keras layers take (``Rescaling(scale,
offset)`` or ``Normalization(mean=..., variance=...)``), so a trained model can take raw input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnops.catalog import PREPROCESSING_JSON, PROCESSED_META, SPLITS, data_hash, split_path
from nnops.config import Params, SplitParams
from nnops.errors import NnopsError
from nnops.split import split_indices

log = logging.getLogger(__name__)

SLICE_PREFIX = "slice__"
MISSING_SLICE = "(missing)"


def resolve_method(scaling: str, value_range: Sequence[float] | None) -> str:
    """Turn ``preprocess.scaling`` into the method used: ``auto`` rescales pixels, standardises csv.

    Args:
        scaling: ``auto``, ``rescale``, ``standardize`` or ``none``.
        value_range: the source's known (min, max) value range, or None (csv).
    """
    if scaling == "auto":
        return "rescale" if value_range else "standardize"
    return scaling


def fit_scaling(
    method: str, x_train: np.ndarray, value_range: Sequence[float] | None = None
) -> dict[str, Any]:
    """Fit the scaling on training rows only.

    ``rescale`` maps the source's known range (pixels: 0..16 or 0..255) to [0, 1]; without a
    known range it uses the training minimum and maximum. ``standardize`` stores per-feature
    mean and variance; a constant feature gets variance 1 so it maps to 0, not to infinity.

    Args:
        method: ``rescale``, ``standardize`` or ``none``.
        x_train: raw training features, shape (n, d).
        value_range: the source's known (min, max) value range, if any.
    """
    if method == "none":
        return {"method": "none", "scale": 1.0, "offset": 0.0}
    if method == "rescale":
        low, high = value_range if value_range else (float(x_train.min()), float(x_train.max()))
        if high <= low:
            raise NnopsError(
                f"preprocess.scaling=rescale: value range [{low}, {high}] is empty; "
                "use preprocess.scaling=standardize or none"
            )
        return {"method": "rescale", "scale": 1.0 / (high - low), "offset": -low / (high - low)}
    if method == "standardize":
        x64 = x_train.astype(np.float64)
        mean = x64.mean(axis=0)
        variance = x64.var(axis=0)
        variance = np.where(variance > 1e-12, variance, 1.0)
        return {"method": "standardize", "mean": mean.tolist(), "variance": variance.tolist()}
    raise NnopsError(f"preprocess.scaling: unknown method {method!r}")


def apply_scaling(spec: Mapping[str, Any], x_raw: np.ndarray) -> np.ndarray:
    """Apply a fitted scaling the way the Keras layers do, returning float32.

    Args:
        spec: the fitted scaling from :func:`fit_scaling`.
        x_raw: raw features, shape (n, d).
    """
    x = np.array(x_raw, dtype=np.float32)  # a copy, scaled in place (no temporaries)
    if spec["method"] == "standardize":
        x -= np.asarray(spec["mean"], dtype=np.float32)
        x /= np.sqrt(np.asarray(spec["variance"], dtype=np.float32))
        return x
    x *= np.float32(spec["scale"])
    x += np.float32(spec["offset"])
    return x


def slice_values(column: pd.Series) -> np.ndarray:
    """Return a slice column as a unicode string array (missing values named, no pickle).

    Args:
        column: the raw column.
    """
    return column.astype(object).where(column.notna(), MISSING_SLICE).astype(str).to_numpy(str)


def make_splits(
    frame: pd.DataFrame,
    meta: Mapping[str, Any],
    split: SplitParams,
    scaling: str,
    slice_columns: Sequence[str] = (),
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Split the raw table and scale it; return the arrays per split and the fitted scaling.

    Args:
        frame: the raw table.
        meta: the raw metadata (feature names, value range).
        split: the ``split`` params.
        scaling: ``preprocess.scaling``.
        slice_columns: raw columns to carry as ``slice__<column>`` string arrays.
    """
    missing = [c for c in slice_columns if c not in frame.columns]
    if missing:
        raise NnopsError(
            f"data.exclude_columns names {missing}, which the raw table does not have; "
            "rerun ingest (dvc repro ingest)"
        )
    x_all = frame[list(meta["feature_names"])].to_numpy()  # pixels stay uint8 until split
    if x_all.dtype.kind not in "iuf":
        x_all = x_all.astype(np.float32)
    y_all = frame["label"].to_numpy(dtype=np.int64)
    origin = frame["origin"].astype(str).to_numpy() if "origin" in frame.columns else None
    parts = split_indices(y_all, origin, split.val_fraction, split.test_fraction, split.seed)
    value_range = meta.get("value_range")
    method = resolve_method(scaling, value_range)
    needs_rows = method == "standardize" or (method == "rescale" and not value_range)
    train_rows = x_all[parts.train].astype(np.float32) if needs_rows else x_all[:0]
    spec = fit_scaling(method, train_rows, value_range)
    del train_rows
    slices = {c: slice_values(frame[c]) for c in slice_columns}
    arrays = {}
    for name, rows in zip(SPLITS, parts, strict=True):
        x_raw = x_all[rows].astype(np.float32)
        arrays[name] = {
            "x_raw": x_raw,
            "x": apply_scaling(spec, x_raw),
            "y": y_all[rows],
            **{f"{SLICE_PREFIX}{c}": values[rows] for c, values in slices.items()},
        }
    return arrays, spec


def test_only_classes(
    arrays: Mapping[str, Mapping[str, np.ndarray]], class_names: Sequence[str]
) -> dict[str, int]:
    """Classes that have test rows but no training rows, with their test row counts.

    The model never sees such a class, so every one of its test rows is an error: a source whose
    own test split holds a class its training split lacks scores far lower than expected.

    Args:
        arrays: the arrays per split.
        class_names: the name of each class index.
    """
    seen = set(np.unique(arrays["train"]["y"]).tolist())
    labels, counts = np.unique(arrays["test"]["y"], return_counts=True)
    return {
        str(class_names[int(k)]): int(n)
        for k, n in zip(labels, counts, strict=True)
        if int(k) not in seen
    }


def processed_meta(
    raw_meta: Mapping[str, Any],
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    spec: Mapping[str, Any],
    slice_columns: Sequence[str],
) -> dict[str, Any]:
    """Return the processed metadata: the raw metadata plus split sizes, data hash and slices.

    Args:
        raw_meta: the raw metadata.
        arrays: the arrays per split.
        spec: the fitted scaling.
        slice_columns: the slice columns carried.
    """
    return {
        **raw_meta,
        "splits": {name: int(len(arrays[name]["y"])) for name in SPLITS},
        "data_hash": data_hash(arrays),
        "slice_columns": list(slice_columns),
        "preprocessing_method": spec["method"],
        "test_only_classes": test_only_classes(arrays, raw_meta["class_names"]),
    }


def check_validation(report: Mapping[str, Any], raw_meta: Mapping[str, Any], where: str) -> None:
    """Refuse to preprocess data that did not pass validation, or that changed since.

    Args:
        report: the validate stage's ``validation.json``.
        raw_meta: the raw metadata.
        where: the report path, for messages.
    """
    if not report.get("success"):
        raise NnopsError(f"{where}: the raw data failed validation; fix it and rerun validate")
    if report.get("content_hash") != raw_meta.get("content_hash"):
        raise NnopsError(
            f"{where}: validated content hash {report.get('content_hash')} differs from the raw "
            f"data's {raw_meta.get('content_hash')}; rerun validate (dvc repro validate)"
        )


def preprocess(
    frame: pd.DataFrame,
    raw_meta: Mapping[str, Any],
    report: Mapping[str, Any],
    where: str,
    params: Params,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any], dict[str, Any]]:
    """Check the validation verdict, then split and scale; return arrays, scaling and metadata.

    Logs a warning for each class the test split holds but the training split lacks.

    Args:
        frame: the raw table.
        raw_meta: the raw metadata.
        report: the validate stage's ``validation.json``.
        where: the report's path, for messages.
        params: the project params (``split``, ``preprocess``, ``data.exclude_columns``).
    """
    check_validation(report, raw_meta, where)
    slices = params.data.exclude_columns
    arrays, spec = make_splits(frame, raw_meta, params.split, params.preprocess.scaling, slices)
    meta = processed_meta(raw_meta, arrays, spec, slices)
    for name, rows in meta["test_only_classes"].items():
        log.warning(
            "class %r has %d test row(s) but no training rows: the model cannot learn it, so "
            "those rows all count as errors in test accuracy; add training rows for it",
            name, rows,
        )  # fmt: skip
    return arrays, spec, meta


def write_processed(
    out: str | Path,
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> None:
    """Write ``train/val/test.npz``, ``preprocessing.json`` and ``meta.json`` (atomically).

    The splits are written uncompressed: zlib cost about a minute of CPU on MNIST-sized data,
    while DVC's cache already keeps one copy per content. Readers see the same keys either way.

    Args:
        out: the output directory.
        arrays: the arrays per split.
        spec: the fitted scaling.
        meta: the processed metadata.
    """
    from nnops.io import atomic_path, write_json

    for name in SPLITS:
        with atomic_path(split_path(out, name)) as tmp, tmp.open("wb") as f:
            np.savez(f, **arrays[name])
    write_json(Path(out) / PREPROCESSING_JSON, dict(spec))
    write_json(Path(out) / PROCESSED_META, dict(meta))
    log.info("%s scaling, splits %s -> %s", spec["method"], meta.get("splits"), out)
