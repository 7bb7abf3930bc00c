"""Condense the raw table into the small tables the validation suite checks.

Pixel data has hundreds of feature columns, and one GX expectation per column is slow (81 s on
MNIST-shaped data). Instead :func:`profile` condenses the raw table, with vectorised numpy, into
small tables that keep every guarantee:

- ``columns``: the raw table with no rows (names and order, for the schema check);
- ``rows``: one row per example: ``label``, ``origin`` and a ``row_hash`` over features + label;
- ``features``: one row per feature column: dtype, missing and infinite counts (a value beyond
  float32's range counts as infinite: preprocess stores features as float32), finite min and
  max, whether it is a row number or id (``row_id``), and the drift decision between the train
  and test partitions (:mod:`nnops.drift`);
- ``classes``: one row per class: count and share of rows.

:func:`reference_profile` keeps what a new batch is checked against (``profile.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nnops.config import SplitParams, ValidateParams
from nnops.drift import compare, drift_summary, drift_table, feature_blocks, readjust
from nnops.errors import NnopsError
from nnops.io import plain
from nnops.split import split_indices

ORIGINS = ("train", "test")
IMAGE_SOURCES = ("digits", "mnist", "fashion_mnist", "npz")
IMAGE_RANGE = (0.0, 255.0)
PROFILE_FORMAT = "nnops-profile/1"


@dataclass(frozen=True)
class Profile:
    """The small tables GX checks, plus what the report needs to describe them."""

    columns: pd.DataFrame
    rows: pd.DataFrame
    features: pd.DataFrame
    classes: pd.DataFrame
    expected_columns: list[str]
    n_classes: int
    partitions: dict[str, Any]
    drift: dict[str, Any]
    reference: dict[str, dict[str, Any]]
    frame: pd.DataFrame


def value_bounds(params: ValidateParams, meta: dict[str, Any]) -> tuple[float | None, float | None]:
    """Return the (min, max) feature bounds: the params when set, else the source's pixel range.

    Args:
        params: the ``validate`` params section.
        meta: the raw metadata (``value_range`` is null for csv: unbounded; an image source
            without one, such as an npz of floats, is held to 0..255).
    """
    known = meta.get("value_range") or (None, None)
    if known == (None, None) and meta.get("source") in IMAGE_SOURCES:
        known = IMAGE_RANGE  # an npz of float images: still pixels, still 0..255
    low = params.value_min if params.value_min is not None else known[0]
    high = params.value_max if params.value_max is not None else known[1]
    return low, high


def _split_for_drift(
    frame: pd.DataFrame, split: SplitParams
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return the train and test row indices preprocess will use (empty if it cannot split)."""
    labels = pd.to_numeric(frame.get("label"), errors="coerce")
    labels = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=-1).astype(np.int64)
    origin = frame["origin"].astype(str).to_numpy() if "origin" in frame.columns else None
    own = origin is not None and bool(np.any(origin == "test"))
    basis = "the source's own test split" if own else "the seeded stratified split preprocess uses"
    try:
        parts = split_indices(labels, origin, split.val_fraction, split.test_fraction, split.seed)
    except NnopsError as exc:
        empty = np.array([], dtype=np.int64)
        return empty, empty, {"basis": basis, "error": str(exc)}
    info = {"basis": basis, "train": len(parts.train), "test": len(parts.test)}
    return parts.train, parts.test, info


FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest float32 (~3.4e38): preprocess stores features as float32, so a value beyond it
becomes inf there, and counts as infinite here."""


def not_float32(values: np.ndarray) -> np.ndarray:
    """Where ``values`` are infinite or beyond float32's range (NaN is neither).

    Args:
        values: float values, any shape.
    """
    with np.errstate(invalid="ignore"):
        return (values > FLOAT32_MAX) | (values < -FLOAT32_MAX)


def _summaries(values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Missing and infinite counts (infinite, or beyond float32's range), finite min and max per
    feature row of ``values``."""
    if values.dtype.kind == "f":
        missing = np.isnan(values).sum(axis=1)
        infinite = not_float32(values).sum(axis=1)
        finite = np.isfinite(values)
        low = np.where(finite, values, np.inf).min(axis=1, initial=np.inf)
        high = np.where(finite, values, -np.inf).max(axis=1, initial=-np.inf)
    else:
        missing = infinite = np.zeros(values.shape[0], dtype=np.int64)
        low = values.min(axis=1, initial=np.iinfo(values.dtype).max).astype(np.float64)
        high = values.max(axis=1, initial=np.iinfo(values.dtype).min).astype(np.float64)
    return missing, infinite, low, high


# Column names that say "row number or identifier" (pandas writes its index as "Unnamed: 0"):
# id, index, ..., a snake_case name ending in _id (any case), or a camelCase one ending in Id or
# ID after a lowercase letter (PatientId, CustomerID, userId; case-sensitive, so that words
# ending in "id" such as fluid, acid or Squid are not taken for ids).
_ID_NAME = re.compile(
    r"(?i:^(id|idx|index|row|rowid|row_id|row_number|unnamed: ?\d+)$|_id$)|[a-z](Id|ID)$"
)


def _row_ids(names: list[str], values: np.ndarray, low: np.ndarray, high: np.ndarray) -> list[int]:
    """Flag (1) each feature row of ``values`` that is a row number or id, else 0.

    A feature is one when its values are distinct integers and either run consecutively (one
    per row: ``0..n-1``, ``1..n``, shuffled or not) or its name says id or index. Only columns
    whose range or name allows it are looked at, so pixel blocks cost nothing.
    """
    n = values.shape[1]
    flags = [0] * len(names)
    for i, name in enumerate(names):
        consecutive = n > 1 and high[i] - low[i] + 1 == n
        if not (consecutive or _ID_NAME.search(name)) or n < 2:
            continue
        row = values[i]
        if row.dtype.kind == "f" and not (np.isfinite(row).all() and (row == np.round(row)).all()):
            continue
        flags[i] = int(len(np.unique(row)) == n)
    return flags


def profile(
    frame: pd.DataFrame, meta: dict[str, Any], split: SplitParams, params: ValidateParams
) -> Profile:
    """Condense the raw table into the small tables the suite checks.

    Args:
        frame: the raw table (``data/raw/data.parquet``).
        meta: the raw metadata (``data/raw/meta.json``).
        split: the ``split`` params, to draw the train/test partitions for drift.
        params: the ``validate`` params (drift thresholds).
    """
    features = list(meta["feature_names"])
    expected = [*features, "label", "origin", *meta.get("exclude_columns", [])]
    train, test, partitions = _split_for_drift(frame, split)
    records, drift_parts, reference = [], [], {}
    for names, values in feature_blocks(frame, features):
        missing, infinite, low, high = _summaries(values)
        cmp = compare(values, train, test)
        drift_parts.append(drift_table(names, cmp, len(train), params))
        ids = _row_ids(names, values, low, high)
        for i, name in enumerate(names):
            records.append(
                (name, str(frame[name].dtype), missing[i], infinite[i], low[i], high[i], ids[i])
            )
            reference[name] = {
                "n": int(cmp.n_first[i]),
                "mean": cmp.mean_first[i],
                "std": cmp.std_first[i],
                "sketch": cmp.sketch[i].tolist(),
            }
    table = pd.DataFrame(
        records,
        columns=["feature", "dtype", "n_missing", "n_infinite", "min", "max", "row_id"],
    )
    if drift_parts:
        # one Benjamini-Hochberg adjustment over all features, whatever their dtype block
        drift = pd.concat(drift_parts, ignore_index=True)
        if len(drift_parts) > 1:
            drift = readjust(drift, params, len(train))
        table = table.merge(drift, on="feature", how="left")
    else:
        table = table.assign(drift=pd.Series(dtype=np.float64))
    order = {name: i for i, name in enumerate(features)}
    table = table.sort_values("feature", key=lambda s: s.map(order)).reset_index(drop=True)
    table[["min", "max"]] = table[["min", "max"]].replace([np.inf, -np.inf], np.nan)

    hashed = [c for c in (*features, "label") if c in frame.columns]
    rows = pd.DataFrame(
        {
            **{c: frame[c].to_numpy() for c in ("label", "origin") if c in frame.columns},
            "row_hash": pd.util.hash_pandas_object(frame[hashed], index=False).to_numpy(),
        }
    )
    class_names = list(meta["class_names"])
    labels = pd.to_numeric(frame.get("label", pd.Series(dtype=float)), errors="coerce")
    counts = labels.value_counts().reindex(range(len(class_names)), fill_value=0)
    classes = pd.DataFrame(
        {
            "class_index": range(len(class_names)),
            "class_name": class_names,
            "count": counts.to_numpy(),
            "fraction": counts.to_numpy() / max(len(frame), 1),
        }
    )
    return Profile(
        columns=frame.iloc[:0],
        rows=rows,
        features=table,
        classes=classes,
        expected_columns=expected,
        n_classes=len(class_names),
        partitions=partitions,
        drift=drift_summary(table, params, len(train), len(test)),
        reference=reference,
        frame=frame,
    )


def reference_profile(
    prof: Profile, params: ValidateParams, meta: dict[str, Any], label_column: str
) -> dict[str, Any]:
    """The training profile a new batch is checked against (``profile.json``).

    Holds the schema (feature names and dtypes, the label column and class names), the value
    bounds, and per feature the training partition's size, mean, standard deviation, min, max
    and a quantile sketch (see :data:`SKETCH_POINTS`) from which drift is measured.

    Args:
        prof: the profile from :func:`profile`.
        params: the ``validate`` params (bounds and drift thresholds travel with the profile).
        meta: the raw metadata.
        label_column: the label's name in the user's files (``data.label_column``).
    """
    low, high = value_bounds(params, meta)
    table = prof.features.set_index("feature")
    features = {
        name: plain(
            {
                "dtype": table.at[name, "dtype"],
                "min": table.at[name, "min"],
                "max": table.at[name, "max"],
                **{k: v for k, v in ref.items() if k != "sketch"},
            }
        )
        for name, ref in prof.reference.items()
    }
    for name, ref in prof.reference.items():  # plain lists of numbers already: no walk over them
        features[name]["sketch"] = ref["sketch"]
    head = plain(
        {
            "format": PROFILE_FORMAT,
            "source": meta.get("source"),
            "content_hash": meta.get("content_hash"),
            "feature_names": list(meta["feature_names"]),
            "image_shape": meta.get("image_shape"),
            "label_column": label_column,
            "class_names": list(meta["class_names"]),
            "exclude_columns": list(meta.get("exclude_columns", [])),
            "value_bounds": [low, high],
            "n_reference": prof.partitions.get("train", 0),
            "basis": prof.partitions.get("basis"),
            "validate": params.model_dump(mode="json"),
        }
    )
    return {**head, "features": features}


def profile_json(profile: dict[str, Any]) -> str:
    """The training profile as compact JSON (the sketches hold up to a million numbers)."""
    return json.dumps(profile, separators=(",", ":"), allow_nan=False) + "\n"
