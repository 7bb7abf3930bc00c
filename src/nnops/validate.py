"""Check the raw table with a Great Expectations suite built in code.

Pixel data has hundreds of feature columns, and one GX expectation per column is slow (81 s on
MNIST-shaped data). Instead :func:`profile` condenses the raw table, with vectorised numpy, into
small tables that keep every guarantee:

- ``columns``: the raw table with no rows (names and order, for the schema check);
- ``rows``: one row per example: ``label``, ``origin`` and a ``row_hash`` over features + label;
- ``features``: one row per feature column: dtype, missing and infinite counts, finite min and
  max, and the Kolmogorov-Smirnov statistic between the train and test partitions;
- ``classes``: one row per class: count and share of rows.

GX then checks these tables (:func:`build_checks`, :func:`run_suites`), and :func:`summarise`
turns its results into the compact report, naming the offending column for each expectation.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nnops.config import SplitParams, ValidateParams
from nnops.errors import NnopsError
from nnops.split import split_indices

log = logging.getLogger(__name__)

NUMERIC_DTYPES = (
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64",
)  # fmt: skip
INTEGER_DTYPES = NUMERIC_DTYPES[:8]
ORIGINS = ("train", "test")
IMAGE_SOURCES = ("digits", "mnist", "fashion_mnist", "npz")
IMAGE_RANGE = (0.0, 255.0)
PROFILE_FORMAT = "nnops-profile/1"
DRIFT_ROWS_SHOWN = 30  # drifted features, then the closest calls, in the HTML drift table


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


@dataclass(frozen=True)
class Check:
    """One expectation: a short name, the table it runs on, the GX class and how to report it."""

    name: str
    table: str
    kind: str
    kwargs: dict[str, Any]
    column: str | None
    bound: Any
    describe: str


def import_gx_in_background() -> threading.Thread:
    """Start importing Great Expectations in a daemon thread and return the thread.

    The import takes seconds; reading and profiling the raw table (numpy and pyarrow, which
    release the GIL) can run meanwhile. :func:`run_suites` imports GX as usual, waiting for this
    import to finish; an import error surfaces there.
    """

    def _import() -> None:
        try:
            importlib.import_module("great_expectations")
        except Exception:  # reported again, in the main thread, by run_suites
            log.debug("background import of great_expectations failed", exc_info=True)

    thread = threading.Thread(target=_import, name="import-gx", daemon=True)
    thread.start()
    return thread


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


# Points kept per feature in the reference profile: the whole sorted sample when the training
# partition is smaller, else evenly spaced quantiles (KS and Wasserstein within 1/SKETCH_POINTS).
SKETCH_POINTS = 1001
MERGE_CELLS = 4_000_000  # values merged at once by the vectorised float path (memory bound)


@dataclass(frozen=True)
class Comparison:
    """Two-sample statistics per feature (one entry per row of the compared arrays)."""

    ks: np.ndarray
    wasserstein: np.ndarray
    n_first: np.ndarray
    n_second: np.ndarray
    mean_first: np.ndarray
    std_first: np.ndarray
    std_second: np.ndarray
    sketch: list[np.ndarray]


def _sketch_picks(n: int) -> np.ndarray:
    """Positions of the sketch points in a sorted sample of ``n`` values (all of them if few)."""
    k = min(n, SKETCH_POINTS)
    return ((np.arange(k) + 0.5) * n / k).astype(np.int64)


def _sketch_from_sorted(values: np.ndarray) -> np.ndarray:
    """Evenly spaced quantiles (mid-points) of a sorted sample, or the sample itself if small."""
    return values[_sketch_picks(len(values))]


def compare(columns: np.ndarray, first: np.ndarray, second: np.ndarray) -> Comparison:
    """KS statistic and Wasserstein distance per feature between two sets of rows.

    Small non-negative integers (pixels) are counted with ``bincount``; other values are
    compared through sorted samples. Non-finite values are left out; a feature with no finite
    values in either set gets NaN. Also returns the first sample's size, mean, spread and a
    quantile sketch (for the reference profile).

    Args:
        columns: feature values, shape (n_features, n_rows), one row per feature.
        first: row indices of the first sample (train, the reference).
        second: row indices of the second sample (test, or a new batch).
    """
    return compare_samples(columns[:, first], columns[:, second])


def compare_samples(a: np.ndarray, b: np.ndarray) -> Comparison:
    """:func:`compare` on two arrays of shape (n_features, n_a) and (n_features, n_b)."""
    n_features = a.shape[0]
    ks, w, std_a, std_b, mean_a = (np.full(n_features, np.nan) for _ in range(5))
    n_a = np.zeros(n_features, dtype=np.int64)
    n_b = np.zeros(n_features, dtype=np.int64)
    sketch: list[np.ndarray] = [np.array([])] * n_features
    small_ints = (
        np.issubdtype(a.dtype, np.integer)
        and np.issubdtype(b.dtype, np.integer)
        and a.size > 0
        and b.size > 0
        and min(a.min(), b.min()) >= 0
        and max(a.max(), b.max()) < 1 << 16
    )
    if small_ints:
        size = int(max(a.max(), b.max())) + 1
        grid = np.arange(size, dtype=np.float64)
        na, nb = a.shape[1], b.shape[1]
        n_a[:], n_b[:] = na, nb
        picks = ((np.arange(min(na, SKETCH_POINTS)) + 0.5) * na / min(na, SKETCH_POINTS)).astype(
            np.int64
        )
        for j in range(n_features):
            counts_a = np.bincount(a[j], minlength=size)
            counts_b = np.bincount(b[j], minlength=size)
            cum_a = np.cumsum(counts_a)
            diff = np.abs(cum_a / na - np.cumsum(counts_b) / nb)
            ks[j], w[j] = diff.max(), diff[:-1].sum()
            mean_a[j] = counts_a @ grid / na
            std_a[j] = math.sqrt(max(counts_a @ grid**2 / na - mean_a[j] ** 2, 0.0))
            mb = counts_b @ grid / nb
            std_b[j] = math.sqrt(max(counts_b @ grid**2 / nb - mb**2, 0.0))
            sketch[j] = np.searchsorted(cum_a, picks, side="right")
        return Comparison(ks, w, n_a, n_b, mean_a, std_a, std_b, sketch)
    sorted_a = np.sort(np.asarray(a, dtype=np.float64), axis=1)  # one vectorised sort each
    sorted_b = np.sort(np.asarray(b, dtype=np.float64), axis=1)
    whole = np.isfinite(sorted_a).all(axis=1) & np.isfinite(sorted_b).all(axis=1)
    if whole.any() and sorted_a.shape[1] and sorted_b.shape[1]:
        rows = np.flatnonzero(whole)
        x = sorted_a[rows]
        n_a[rows], n_b[rows] = x.shape[1], sorted_b.shape[1]
        mean_a[rows], std_a[rows] = x.mean(axis=1), x.std(axis=1)
        std_b[rows] = sorted_b[rows].std(axis=1)
        picks = _sketch_picks(x.shape[1])
        for i, r in enumerate(rows):
            sketch[r] = x[i, picks]
        step = max(1, MERGE_CELLS // (x.shape[1] + sorted_b.shape[1]))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            ks[chunk], w[chunk] = _merged_stats(sorted_a[chunk], sorted_b[chunk])
    for j in np.flatnonzero(~whole):
        x, y = sorted_a[j], sorted_b[j]
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        n_a[j], n_b[j] = len(x), len(y)
        if len(x):
            mean_a[j], std_a[j] = x.mean(), x.std()
            sketch[j] = _sketch_from_sorted(x)
        if len(y):
            std_b[j] = y.std()
        if len(x) == 0 or len(y) == 0:
            continue
        points = np.sort(np.concatenate([x, y]))
        diff = np.abs(
            np.searchsorted(x, points, side="right") / len(x)
            - np.searchsorted(y, points, side="right") / len(y)
        )
        ks[j], w[j] = diff.max(), float(diff[:-1] @ np.diff(points))
    return Comparison(ks, w, n_a, n_b, mean_a, std_a, std_b, sketch)


def _merged_stats(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KS and Wasserstein per row of two row-sorted, all-finite arrays, merged in one go."""
    n, m = x.shape[1], y.shape[1]
    both = np.concatenate([x, y], axis=1)
    order = np.argsort(both, axis=1, kind="stable")  # two sorted runs: a linear merge
    values = np.take_along_axis(both, order, axis=1)
    from_x = order < n
    diff = np.abs(np.cumsum(from_x, axis=1) / n - np.cumsum(~from_x, axis=1) / m)
    # the empirical CDFs step only after the last of tied values
    tie = np.zeros(diff.shape, dtype=bool)
    tie[:, :-1] = values[:, 1:] == values[:, :-1]
    ks = np.where(tie, 0.0, diff).max(axis=1)
    w = (diff[:, :-1] * np.diff(values, axis=1)).sum(axis=1)
    return ks, w


def ks_p_values(ks: np.ndarray, n_first: np.ndarray, n_second: np.ndarray) -> np.ndarray:
    """Asymptotic two-sided p-values of two-sample KS statistics (as scipy's ``ks_2samp``).

    Args:
        ks: the statistics.
        n_first: the first sample's size, per statistic.
        n_second: the second sample's size, per statistic.
    """
    from scipy.stats import kstwo

    n, m = np.asarray(n_first, dtype=np.float64), np.asarray(n_second, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = np.round(n * m / (n + m))
    p = np.ones_like(ks, dtype=np.float64)
    ok = np.isfinite(ks) & (effective >= 1)
    p[ok] = kstwo.sf(ks[ok], effective[ok])
    return np.clip(p, 0.0, 1.0)


def drift_table(
    names: Sequence[str], cmp: Comparison, n_reference: int, params: ValidateParams
) -> pd.DataFrame:
    """Decide, per feature, whether it drifted, and say why.

    A feature constant at the same value in both samples is not tested. The others get a KS
    p-value, adjusted over all tested features (Benjamini-Hochberg). With fewer than
    ``drift_switch_rows`` reference rows a feature drifts when its adjusted p-value is below
    ``drift_alpha``; from there on, when its Wasserstein distance in reference standard
    deviations exceeds ``drift_distance`` and is also significant, so that neither sampling noise
    in small samples nor a negligible shift in huge ones raises the alarm.

    Args:
        names: the feature names, in the order of ``cmp``.
        cmp: the statistics from :func:`compare` (reference first).
        n_reference: rows in the reference partition (picks the method).
        params: the ``validate`` params section.
    """
    from scipy.stats import false_discovery_control

    v = params
    constant = (cmp.ks == 0) & (cmp.std_first == 0) & (cmp.std_second == 0)
    tested = np.isfinite(cmp.ks) & ~constant
    p = ks_p_values(cmp.ks, cmp.n_first, cmp.n_second)
    adjusted = np.full(len(p), np.nan)
    if tested.any():
        adjusted[tested] = false_discovery_control(p[tested], method="bh")
    scale = np.where(cmp.std_first > 0, cmp.std_first, cmp.std_second)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(
            scale > 0, cmp.wasserstein / scale, np.where(cmp.wasserstein > 0, np.inf, 0.0)
        )
    significant = adjusted < v.drift_alpha
    method = "ks" if n_reference < v.drift_switch_rows else "wasserstein"
    if method == "ks":
        statistic, threshold, drifted = cmp.ks, v.drift_alpha, significant
    else:
        statistic, threshold = distance, v.drift_distance
        drifted = significant & (distance > v.drift_distance)
    reasons = []
    for i in range(len(names)):
        if not tested[i]:
            reasons.append("constant in both samples: not tested" if constant[i] else "no values")
        elif method == "ks":
            reasons.append(
                f"KS {cmp.ks[i]:.3f}: adjusted p {adjusted[i]:.2g} < {v.drift_alpha:g}"
                if drifted[i]
                else ""
            )
        elif drifted[i]:
            reasons.append(
                f"Wasserstein {distance[i]:.3g} std > {v.drift_distance:g} "
                f"(KS {cmp.ks[i]:.3f}, adjusted p {adjusted[i]:.2g} < {v.drift_alpha:g})"
            )
        elif distance[i] > v.drift_distance:
            reasons.append(
                f"Wasserstein {distance[i]:.3g} std > {v.drift_distance:g}, but within sampling "
                f"noise (adjusted p {adjusted[i]:.2g} >= {v.drift_alpha:g}): not counted"
            )
        else:
            reasons.append("")
    return pd.DataFrame(
        {
            "feature": list(names),
            "drift_method": np.where(tested, method, "none"),
            "drift_statistic": statistic,
            "drift_threshold": np.where(tested, threshold, np.nan),
            "ks": cmp.ks,
            "wasserstein": cmp.wasserstein,
            "wasserstein_std": distance,
            "n_reference": cmp.n_first,
            "n_current": cmp.n_second,
            "std_reference": cmp.std_first,
            "std_current": cmp.std_second,
            "p_value": np.where(tested, p, np.nan),
            "p_adjusted": adjusted,
            "drift": np.where(tested, drifted.astype(np.float64), np.nan),
            "drift_reason": reasons,
        }
    )


def drift_summary(
    table: pd.DataFrame, params: ValidateParams, n_reference: int, n_current: int
) -> dict[str, Any]:
    """Dataset-level drift: how many features were tested and drifted, and the decision.

    Args:
        table: the per-feature table from :func:`drift_table`.
        params: the ``validate`` params section.
        n_reference: reference rows.
        n_current: compared rows.
    """
    tested = table["drift"].notna()
    n_tested, n_drifted = int(tested.sum()), int((table["drift"] == 1).sum())
    share = n_drifted / n_tested if n_tested else 0.0
    order = table.assign(
        _rank=table["drift"].fillna(-1), _ratio=table["drift_statistic"] / table["drift_threshold"]
    )
    if (order["drift_method"] == "ks").any():
        order["_ratio"] = -order["p_adjusted"]
    order = order.sort_values(["_rank", "_ratio"], ascending=False, na_position="last")
    keep = ["feature", "drift_method", "drift_statistic", "drift_threshold", "ks",
            "wasserstein_std", "p_value", "p_adjusted", "drift", "drift_reason"]  # fmt: skip
    return _plain(
        {
            "method": "ks" if n_reference < params.drift_switch_rows else "wasserstein",
            "n_reference": n_reference,
            "n_current": n_current,
            "alpha": params.drift_alpha,
            "distance": params.drift_distance,
            "share": params.drift_share,
            "switch_rows": params.drift_switch_rows,
            "n_tested": n_tested,
            "n_drifted": n_drifted,
            "drifted_share": share,
            "drifted": share > params.drift_share,
            "features": order[keep].to_dict(orient="records"),
        }
    )


def _feature_blocks(frame: pd.DataFrame, features: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Group feature columns by dtype; each group as a (n_features, n_rows) array."""
    present = [c for c in features if c in frame.columns]
    blocks = []
    for _, names in pd.Series(present, dtype=object).groupby(
        [str(frame[c].dtype) for c in present], sort=False
    ):
        names = list(names)
        block = frame[names]
        if not all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
            block = block.apply(pd.to_numeric, errors="coerce")
        values = block.to_numpy()
        if values.dtype.kind == "b":
            values = values.astype(np.uint8)
        blocks.append((names, np.ascontiguousarray(values.T)))
    return blocks


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


def _summaries(values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Missing and infinite counts, finite min and max per feature row of ``values``."""
    if values.dtype.kind == "f":
        missing = np.isnan(values).sum(axis=1)
        infinite = np.isinf(values).sum(axis=1)
        finite = np.isfinite(values)
        low = np.where(finite, values, np.inf).min(axis=1, initial=np.inf)
        high = np.where(finite, values, -np.inf).max(axis=1, initial=-np.inf)
    else:
        missing = infinite = np.zeros(values.shape[0], dtype=np.int64)
        low = values.min(axis=1, initial=np.iinfo(values.dtype).max).astype(np.float64)
        high = values.max(axis=1, initial=np.iinfo(values.dtype).min).astype(np.float64)
    return missing, infinite, low, high


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
    for names, values in _feature_blocks(frame, features):
        missing, infinite, low, high = _summaries(values)
        cmp = compare(values, train, test)
        drift_parts.append(drift_table(names, cmp, len(train), params))
        for i, name in enumerate(names):
            records.append((name, str(frame[name].dtype), missing[i], infinite[i], low[i], high[i]))
            reference[name] = {
                "n": int(cmp.n_first[i]),
                "mean": cmp.mean_first[i],
                "std": cmp.std_first[i],
                "sketch": cmp.sketch[i].tolist(),
            }
    table = pd.DataFrame(
        records, columns=["feature", "dtype", "n_missing", "n_infinite", "min", "max"]
    )
    if drift_parts:
        # one Benjamini-Hochberg adjustment over all features, whatever their dtype block
        drift = pd.concat(drift_parts, ignore_index=True)
        if len(drift_parts) > 1:
            drift = _readjust(drift, params, len(train))
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


def feature_drift(
    frame: pd.DataFrame,
    features: Sequence[str],
    first: np.ndarray,
    second: np.ndarray,
    params: ValidateParams,
) -> dict[str, Any]:
    """Drift between two sets of rows of one table, decided as the validate stage does.

    Args:
        frame: the table.
        features: the feature columns.
        first: row indices of the reference (train) rows.
        second: row indices of the compared (test) rows.
        params: the ``validate`` params section.
    """
    parts = [
        drift_table(names, compare(values, first, second), len(first), params)
        for names, values in _feature_blocks(frame, features)
    ]
    table = pd.concat(parts, ignore_index=True)
    if len(parts) > 1:
        table = _readjust(table, params, len(first))
    return drift_summary(table, params, len(first), len(second))


def _readjust(drift: pd.DataFrame, params: ValidateParams, n_reference: int) -> pd.DataFrame:
    """Redo the per-feature decision with one p-value adjustment over every dtype block."""
    cmp = Comparison(
        ks=drift["ks"].to_numpy(),
        wasserstein=drift["wasserstein"].to_numpy(),
        n_first=drift["n_reference"].to_numpy(),
        n_second=drift["n_current"].to_numpy(),
        mean_first=np.zeros(len(drift)),
        std_first=drift["std_reference"].to_numpy(),
        std_second=drift["std_current"].to_numpy(),
        sketch=[],
    )
    return drift_table(drift["feature"].tolist(), cmp, n_reference, params)


def build_checks(prof: Profile, params: ValidateParams, meta: dict[str, Any]) -> list[Check]:
    """Build the expectations for the profile tables from the data and params.

    Args:
        prof: the profile from :func:`profile`.
        params: the ``validate`` params section.
        meta: the raw metadata (class names and the source's value range).
    """
    low, high = value_bounds(params, meta)
    v = params
    between = "ExpectColumnValuesToBeBetween"
    in_set = "ExpectColumnValuesToBeInSet"
    spec: list[tuple[str, str, str, dict[str, Any], str | None, Any, str]] = [
        ("schema_columns", "columns", "ExpectTableColumnsToMatchSet",
         {"column_set": prof.expected_columns, "exact_match": True},
         None, f"{len(prof.expected_columns)} columns from meta.json",
         "the raw table has exactly the expected columns"),
        ("schema_feature_dtypes", "features", in_set,
         {"column": "dtype", "value_set": list(NUMERIC_DTYPES)},
         "dtype", "numeric", "every feature column is numeric"),
        ("schema_label_dtype", "rows", "ExpectColumnValuesToBeInTypeList",
         {"column": "label", "type_list": list(INTEGER_DTYPES)},
         "label", "integer", "the label column holds integers"),
        ("schema_origin", "rows", in_set, {"column": "origin", "value_set": list(ORIGINS)},
         "origin", list(ORIGINS), "origin is train or test"),
        ("no_missing_features", "features", between, {"column": "n_missing", "max_value": 0},
         "n_missing", 0, "no feature value is missing (null/NaN)"),
        ("no_infinite_features", "features", between, {"column": "n_infinite", "max_value": 0},
         "n_infinite", 0, "no feature value is infinite"),
        ("no_missing_labels", "rows", "ExpectColumnValuesToNotBeNull", {"column": "label"},
         "label", 0, "no label is missing"),
        ("label_set", "rows", "ExpectColumnDistinctValuesToEqualSet",
         {"column": "label", "value_set": list(range(prof.n_classes))},
         "label", f"0..{prof.n_classes - 1}", "labels are exactly the known class indices"),
        ("min_rows", "rows", "ExpectTableRowCountToBeBetween", {"min_value": v.min_rows},
         None, f">= {v.min_rows}", "enough rows (validate.min_rows)"),
        ("class_balance", "classes", between,
         {"column": "fraction", "min_value": v.min_class_fraction,
          "max_value": v.max_class_fraction},
         "fraction", [v.min_class_fraction, v.max_class_fraction],
         "every class's share of rows is within bounds"),
        ("duplicate_rows", "rows", "ExpectColumnProportionOfUniqueValuesToBeBetween",
         {"column": "row_hash", "min_value": 1.0 - v.max_duplicate_fraction},
         "row_hash", f"<= {v.max_duplicate_fraction:g}",
         "share of rows repeating an earlier row (features + label)"),
    ]  # fmt: skip
    if low is not None:
        spec.append(("value_min", "features", between, {"column": "min", "min_value": low},
                     "min", f">= {low:g}", "no feature value below the lower bound"))  # fmt: skip
    if high is not None:
        spec.append(("value_max", "features", between, {"column": "max", "max_value": high},
                     "max", f"<= {high:g}", "no feature value above the upper bound"))  # fmt: skip
    spec.append(("drift", "features", in_set,
                 {"column": "drift", "value_set": [0.0], "mostly": 1.0 - v.drift_share},
                 "drift", f"share <= {v.drift_share:g}",
                 "share of features whose train and test partitions differ"))  # fmt: skip
    return [Check(*item) for item in spec]


def run_suites(prof: Profile, checks: Sequence[Check]) -> dict[str, Any]:
    """Validate each profile table with its GX suite in an ephemeral context.

    Returns the GX validation result per check name.

    Args:
        prof: the profile tables.
        checks: the expectations from :func:`build_checks`.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("nnops_raw")
    index_columns = {"features": ["feature"], "classes": ["class_name"]}
    results: dict[str, Any] = {}
    for table in ("columns", "rows", "features", "classes"):
        mine = [c for c in checks if c.table == table]
        if not mine:
            continue
        asset = source.add_dataframe_asset(table)
        batch = asset.add_batch_definition_whole_dataframe(table).get_batch(
            batch_parameters={"dataframe": getattr(prof, table)}
        )
        expectations = [
            getattr(gxe, c.kind)(**c.kwargs, meta={"nnops_check": c.name}) for c in mine
        ]
        suite = gx.ExpectationSuite(name=f"nnops_{table}", expectations=expectations)
        result_format: dict[str, Any] = {"result_format": "COMPLETE"}
        if table in index_columns:
            result_format["unexpected_index_column_names"] = index_columns[table]
        outcome = batch.validate(suite, result_format=result_format)
        for res in outcome.results:
            results[res.expectation_config.meta["nnops_check"]] = res
    return results


def _plain(value: Any) -> Any:
    """Turn numpy scalars and containers into JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _raised(res: Any) -> bool:
    """Whether GX could not evaluate the expectation (for example a missing column)."""
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return True
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _per_item(prof: Profile, check: Check, result: dict[str, Any]) -> dict[str, Any]:
    """Column and observed value of a per-feature or per-class check.

    A failing check names its most extreme failing feature (or class), as GX reported it; a
    passing one names the most extreme feature, so the report shows how close it came.
    """
    key = "feature" if check.table == "features" else "class_name"
    failing = [
        {"column": str(item[key]), "observed": item[check.column]}
        for item in result.get("unexpected_index_list") or []
    ]
    table = getattr(prof, check.table)
    lowest = check.column == "min"
    if check.table == "classes":
        fractions = table.set_index("class_name")["fraction"]
        worst = failing[0] if failing else None
        observed = {"min": fractions.min(), "max": fractions.max()}
        if worst:
            observed = {f"class {worst['column']}": worst["observed"]}
        return {"column": "label", "observed": observed, "failing": failing}
    if check.column == "dtype":
        worst = failing[0] if failing else {"column": None, "observed": "all numeric"}
    elif failing:
        pick = min if lowest else max
        worst = pick(failing, key=lambda f: f["observed"])
    elif table[check.column].notna().any():
        i = table[check.column].idxmin() if lowest else table[check.column].idxmax()
        worst = {"column": table.at[i, key], "observed": table.at[i, check.column]}
    else:
        worst = {"column": None, "observed": None}
    return {"column": worst["column"], "observed": worst["observed"], "failing": failing}


def range_detail(
    frame: pd.DataFrame, columns: Sequence[str], low: float | None, high: float | None
) -> str:
    """Name, per split (origin), the columns holding values outside [low, high] and their range.

    Args:
        frame: the raw table (or a batch, without ``origin``).
        columns: the feature columns to look at (those that failed).
        low: the lower bound, if any.
        high: the upper bound, if any.
    """
    columns = [c for c in columns if c in frame.columns]
    if not columns:
        return ""
    origin = frame["origin"].astype(str) if "origin" in frame.columns else None
    parts = []
    for split in ORIGINS if origin is not None else ("batch",):
        block = frame[columns] if origin is None else frame.loc[origin == split, columns]
        values = block.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        outside = np.isfinite(values) & (
            (values < (low if low is not None else -np.inf))
            | (values > (high if high is not None else np.inf))
        )
        if not outside.any():
            continue
        bad = values[outside]
        names = [columns[j] for j in np.flatnonzero(outside.any(axis=0))]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        parts.append(
            f"split {split}: {int(outside.sum())} value(s) in {bad.min():g}..{bad.max():g} "
            f"in {', '.join(names[:3])}{more}"
        )
    if low is not None and high is not None:
        bound = f"{low:g}..{high:g}"
    else:
        bound = f">= {low:g}" if low is not None else f"<= {high:g}"
    return "; ".join(parts) + f" (allowed {bound})" if parts else ""


def _drift_entry(prof: Profile) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Column, observed value and failing features of the dataset drift check."""
    d = prof.drift
    drifted = [f for f in d["features"] if f["drift"] == 1]
    failing = [
        {"column": f["feature"], "observed": f["drift_statistic"], "reason": f["drift_reason"]}
        for f in drifted
    ]
    observed = {
        "method": d["method"],
        "drifted": d["n_drifted"],
        "tested": d["n_tested"],
        "share": round(d["drifted_share"], 4),
    }
    names = [f["feature"] for f in (drifted or d["features"][:1])]
    column = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return column or None, observed, failing


def _entry(prof: Profile, check: Check, res: Any) -> dict[str, Any]:
    """One line of the compact report: which column, what was seen, the bound, pass/fail."""
    result = res.result or {}
    column, observed, failing = check.column, result.get("observed_value"), []
    detail = None
    if _raised(res):
        observed = "not evaluated: " + str(
            (res.exception_info or {}).get("exception_message") or "the column is missing"
        )
    elif check.name == "drift":
        column, observed, failing = _drift_entry(prof)
    elif check.table in ("features", "classes"):
        item = _per_item(prof, check, result)
        column, observed, failing = item["column"], item["observed"], item["failing"]
        if check.name in ("value_min", "value_max") and failing:
            bound = check.kwargs.get("min_value", check.kwargs.get("max_value"))
            low, high = (bound, None) if check.name == "value_min" else (None, bound)
            detail = range_detail(prof.frame, [f["column"] for f in failing], low, high)
    elif check.name == "schema_columns":
        mismatch = (result.get("details") or {}).get("mismatched") or {}
        observed = {k: mismatch.get(k, []) for k in ("missing", "unexpected")}
        column = ", ".join(observed["missing"] + observed["unexpected"]) or None
    elif check.name == "label_set":
        observed = sorted(prof.rows["label"].dropna().unique().tolist())
    elif check.name == "duplicate_rows":
        unique = result.get("observed_value")
        observed = None if unique is None else 1.0 - float(unique)
    elif check.name in ("schema_origin", "no_missing_labels"):
        observed = {
            "unexpected_count": result.get("unexpected_count", 0),
            "examples": (result.get("partial_unexpected_list") or [])[:5],
        }
    return _plain(
        {
            "name": check.name,
            "expectation": res.expectation_config.type,
            "description": check.describe,
            "column": column,
            "observed": observed,
            "bound": check.bound,
            "success": bool(res.success),
            **({"failing_columns": failing[:20], "n_failing": len(failing)} if failing else {}),
            **({"detail": detail} if detail else {}),
        }
    )


def summarise(
    prof: Profile, checks: Sequence[Check], results: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    """Build the compact machine report (``validation.json``).

    Args:
        prof: the profile tables.
        checks: the expectations that ran.
        results: GX results per check name, from :func:`run_suites`.
        meta: the raw metadata.
    """
    entries = [_entry(prof, check, results[check.name]) for check in checks]
    return _plain(
        {
            "success": all(e["success"] for e in entries),
            "source": meta.get("source"),
            "n_rows": len(prof.rows),
            "n_features": len(prof.features),
            "content_hash": meta.get("content_hash"),
            "partitions": prof.partitions,
            "drift": prof.drift,
            "n_expectations": len(entries),
            "n_failed": sum(not e["success"] for e in entries),
            "expectations": entries,
        }
    )


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per failed expectation: name, column, observed value, bound and why.

    Args:
        report: the compact report from :func:`summarise` (or a batch report).
    """
    lines = []
    for e in report["expectations"]:
        if e["success"]:
            continue
        more = f" ({e['n_failing']} columns fail)" if e.get("n_failing", 0) > 1 else ""
        why = e.get("detail") or "; ".join(
            f"{f['column']}: {f['reason']}"
            for f in e.get("failing_columns", [])[:3]
            if f.get("reason")
        )
        lines.append(
            f"FAILED {e['name']}: column {e['column']!s}: observed {e['observed']!s}, "
            f"bound {e['bound']!s}{more} -- {e['description']}" + (f" [{why}]" if why else "")
        )
    return lines


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
        name: _plain(
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
    head = _plain(
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
    import json

    return json.dumps(profile, separators=(",", ":"), allow_nan=False) + "\n"


def render_html(report: dict[str, Any], title: str = "Data validation") -> str:
    """Render a validation report (stage or batch) as a self-contained HTML page.

    Args:
        report: the compact report from :func:`summarise` or a batch report.
        title: the page heading.
    """
    from jinja2 import Environment, PackageLoader

    env = Environment(
        loader=PackageLoader("nnops", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    drift = report.get("drift") or {}
    shown = [f for f in drift.get("features", []) if f.get("drift") == 1]
    rest = [f for f in drift.get("features", []) if f.get("drift") != 1]
    shown += rest[: max(0, DRIFT_ROWS_SHOWN - len(shown))]
    return env.get_template("validation.html.j2").render(
        title=title, report=report, drift=drift, drift_rows=shown
    )


def _num(value: Any) -> str:
    """Format a number for the report: 4 significant digits, or as-is for text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
