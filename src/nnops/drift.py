"""Drift between two samples of the same features: KS and Wasserstein, per feature and overall.

The validate stage compares the train and test partitions of the raw table; ``nnops
validate-batch`` compares a new batch with the training profile's quantile sketches. Both decide
with :func:`drift_table` (per feature) and :func:`drift_summary` (the dataset's verdict).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nnops.config import ValidateParams
from nnops.io import plain

# Points kept per feature in the reference profile: the whole sorted sample when the training
# partition is smaller, else evenly spaced quantiles (KS and Wasserstein within 1/SKETCH_POINTS).
SKETCH_POINTS = 1001
FEATURE_CHUNK = 64  # integer features compared at once by compare (bounds its copies)
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
    n = columns.shape[0]
    if n <= FEATURE_CHUNK or not np.issubdtype(columns.dtype, np.integer):
        return compare_samples(columns[:, first], columns[:, second])
    # Integer pixels: a few features at a time, so the two samples are never copied whole. The
    # bincount grid spans both samples' range, as for the whole arrays, so the sums are the same.
    chunks = [slice(i, i + FEATURE_CHUNK) for i in range(0, n, FEATURE_CHUNK)]
    samples = ((columns[c][:, first], columns[c][:, second]) for c in chunks)
    bounds = [(p.min(), p.max()) for pair in samples for p in pair if p.size]
    if len(bounds) < 2 * len(chunks) or min(lo for lo, _ in bounds) < 0:
        return compare_samples(columns[:, first], columns[:, second])
    size = int(max(hi for _, hi in bounds)) + 1
    if size > 1 << 16:
        return compare_samples(columns[:, first], columns[:, second])
    parts = [compare_samples(columns[c][:, first], columns[c][:, second], size) for c in chunks]
    fields = ("ks", "wasserstein", "n_first", "n_second", "mean_first", "std_first", "std_second")
    return Comparison(
        **{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields},
        sketch=[s for p in parts for s in p.sketch],
    )


def compare_samples(a: np.ndarray, b: np.ndarray, size: int | None = None) -> Comparison:
    """:func:`compare` on two arrays of shape (n_features, n_a) and (n_features, n_b).

    Args:
        a: the first sample, one row per feature.
        b: the second sample.
        size: for small non-negative integers, the bincount grid (default: both samples' max + 1).
    """
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
        size = size or int(max(a.max(), b.max())) + 1
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
    return plain(
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


def feature_blocks(frame: pd.DataFrame, features: Sequence[str]) -> list[tuple[list[str], Any]]:
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
        for names, values in feature_blocks(frame, features)
    ]
    table = pd.concat(parts, ignore_index=True)
    if len(parts) > 1:
        table = readjust(table, params, len(first))
    return drift_summary(table, params, len(first), len(second))


def readjust(drift: pd.DataFrame, params: ValidateParams, n_reference: int) -> pd.DataFrame:
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
