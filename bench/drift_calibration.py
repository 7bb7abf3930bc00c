"""False-alarm rate and power of the validate stage's drift check on real bundled datasets.

For each dataset and many split seeds, the train and test partitions are drawn with the
pipeline's own split (``nnops.split.split_indices``) and compared with the stage's drift
decision (``nnops.drift.feature_drift``) under the params in ``params.yaml``:

- no shift: a random split cannot drift, so every alarm is false (goal <= 1%);
- shifted: a few features of the test partition moved by half a standard deviation, or the test
  images of an npz source brightened (goal: detected in >= 95% of seeds).

Prints one line per dataset and case, side by side. Usage:
``python bench/drift_calibration.py [--seeds 200]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnops import drift
from nnops.config import ValidateParams, load_params
from nnops.ingest import from_arrays, from_table, load_digits
from nnops.raw import RawData
from nnops.split import split_indices

REPO = Path(__file__).resolve().parents[1]


def sklearn_table(name: str) -> RawData:
    """A bundled scikit-learn dataset as the csv source reads it (string class labels)."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    table = bunch.frame.copy()
    table["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return from_table(table, "target", (), where=name)


def digits_npz() -> RawData:
    """scikit-learn's digits scaled to 0..255, with an own test split (an npz source)."""
    raw = load_digits()
    x = (raw.frame[raw.meta["feature_names"]].to_numpy() * 255 // 16).astype(np.uint8)
    y = raw.frame["label"].to_numpy()
    return from_arrays("npz", x[:1200], y[:1200], x[1200:], y[1200:], value_range=(0.0, 255.0))


@dataclass(frozen=True)
class Case:
    """One row of the table: a dataset, a split, and what is done to the test partition."""

    dataset: str
    load: Callable[[], RawData]
    test_fraction: float
    shift: str  # "none", "features" (half a std on a few features) or "brighten"
    n_shifted: int = 0


def shuffled_origin(raw: RawData, seed: int) -> np.ndarray | None:
    """For a source with its own test split, a random test split of the same size per seed."""
    origin = raw.frame["origin"].to_numpy()
    if not (origin == "test").any():
        return None
    rng = np.random.default_rng(seed)
    return rng.permutation(origin)


def drifted(raw: RawData, case: Case, seed: int, params: ValidateParams, split) -> bool:
    """Whether the drift check fails for this seed (after the case's shift, if any)."""
    frame = raw.frame
    labels = frame["label"].to_numpy()
    origin = shuffled_origin(raw, seed)
    parts = split_indices(labels, origin, split.val_fraction, case.test_fraction, seed)
    features = list(raw.meta["feature_names"])
    if case.shift != "none":
        rng = np.random.default_rng(10_000 + seed)
        frame = frame.copy()
        values = frame[features].to_numpy(np.float64)
        if case.shift == "features":
            spread = values.std(axis=0)
            moving = rng.choice(np.flatnonzero(spread > 0), case.n_shifted, replace=False)
            for j in moving:
                name = features[j]
                frame[name] = frame[name].astype(np.float64)
                frame.loc[parts.test, name] += 0.5 * spread[j]
        else:  # brighten the test images by a tenth of the pixel range, clipped
            test = frame.loc[parts.test, features].to_numpy(np.int64)
            frame.loc[parts.test, features] = np.clip(test + 25, 0, 255).astype(np.uint8)
    summary = drift.feature_drift(frame, features, parts.train, parts.test, params)
    return bool(summary["drifted"])


def rate(case: Case, seeds: range, params: ValidateParams, split) -> tuple[float, int, int]:
    """Share of seeds on which the check fails, with the partition sizes of the first seed."""
    raw = case.load()
    labels = raw.frame["label"].to_numpy()
    first = split_indices(
        labels, shuffled_origin(raw, 0), split.val_fraction, case.test_fraction, 0
    )
    hits = sum(drifted(raw, case, s, params, split) for s in seeds)
    return hits / len(seeds), len(first.train), len(first.test)


CASES = [
    Case("iris", lambda: sklearn_table("iris"), 0.15, "none"),
    Case("wine", lambda: sklearn_table("wine"), 0.15, "none"),
    Case("breast_cancer", lambda: sklearn_table("breast_cancer"), 0.15, "none"),
    Case("breast_cancer", lambda: sklearn_table("breast_cancer"), 0.15, "features", 3),
    Case("digits", load_digits, 0.15, "none"),
    Case("digits", load_digits, 0.3, "none"),
    Case("digits", load_digits, 0.3, "features", 5),
    Case("digits as npz", digits_npz, 0.15, "none"),
    Case("digits as npz", digits_npz, 0.15, "brighten"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="split seeds per case")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    v = params.validation
    print(
        f"params: drift_alpha={v.drift_alpha}, drift_distance={v.drift_distance}, "
        f"drift_share={v.drift_share}, drift_switch_rows={v.drift_switch_rows}; "
        f"{args.seeds} seeds per case"
    )
    header = f"{'dataset':<15}{'train':>7}{'test':>6}  {'method':<12}{'test partition':<36}"
    print(header + f"{'false alarms':>13}{'power':>8}")
    start = time.perf_counter()
    for case in CASES:
        share, n_train, n_test = rate(case, range(args.seeds), v, params.split)
        method = "ks" if n_train < v.drift_switch_rows else "wasserstein"
        what = {
            "none": "same distribution",
            "features": f"{case.n_shifted} features + 0.5 std",
            "brighten": "images brightened (+25 of 255)",
        }[case.shift]
        alarm = f"{share:>12.1%}" if case.shift == "none" else f"{'':>12}"
        power = f"{share:>8.1%}" if case.shift != "none" else f"{'':>8}"
        print(f"{case.dataset:<15}{n_train:>7}{n_test:>6}  {method:<12}{what:<36}{alarm} {power}")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
