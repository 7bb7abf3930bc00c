"""Drift check calibrated on real data: no false alarms on random splits, real shifts caught.

Real bundled scikit-learn datasets go through the csv source's reader (string labels) or the
digits source, the partitions come from the pipeline's own split (``nnops.split``), and the
decision is the validate stage's (``nnops.drift.feature_drift``) with the params in
``params.yaml``. ``bench/drift_calibration.py`` prints the same rates as a table.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from nnops import drift
from nnops.config import load_params
from nnops.ingest import from_arrays, from_table, load_digits
from nnops.raw import RawData
from nnops.split import split_indices

pytestmark = [pytest.mark.unit, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")


@cache
def dataset(name: str) -> RawData:
    if name == "digits":
        return load_digits()
    if name == "digits_npz":  # 0..255 pixels with an own test split, as an npz source has
        raw = load_digits()
        x = (raw.frame[raw.meta["feature_names"]].to_numpy() * 255 // 16).astype(np.uint8)
        y = raw.frame["label"].to_numpy()
        return from_arrays("npz", x[:1200], y[:1200], x[1200:], y[1200:], value_range=(0, 255))
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    table = bunch.frame.copy()
    table["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return from_table(table, "target", (), where=name)


def drifted(name: str, seed: int, test_fraction: float, shift: str = "none", k: int = 0) -> bool:
    raw = dataset(name)
    frame, features = raw.frame, list(raw.meta["feature_names"])
    origin = frame["origin"].to_numpy()
    own = (origin == "test").any()  # then a fresh random own-test split per seed
    origin = np.random.default_rng(seed).permutation(origin) if own else None
    split = PARAMS.split
    parts = split_indices(
        frame["label"].to_numpy(), origin, split.val_fraction, test_fraction, seed
    )
    if shift == "features":
        rng = np.random.default_rng(10_000 + seed)
        frame = frame.copy()
        spread = frame[features].to_numpy(np.float64).std(axis=0)
        for j in rng.choice(np.flatnonzero(spread > 0), k, replace=False):
            frame[features[j]] = frame[features[j]].astype(np.float64)
            frame.loc[parts.test, features[j]] += 0.5 * spread[j]
    elif shift == "brighten":
        frame = frame.copy()
        test = frame.loc[parts.test, features].to_numpy(np.int64)
        frame.loc[parts.test, features] = np.clip(test + 25, 0, 255).astype(np.uint8)
    summary = drift.feature_drift(frame, features, parts.train, parts.test, PARAMS.validation)
    return bool(summary["drifted"])


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "digits", "digits_npz"])
def test_random_splits_of_real_data_pass_at_least_99_percent(name: str):
    seeds = range(100)  # at most one alarm; bench/drift_calibration.py prints the rate over 200
    alarms = [s for s in seeds if drifted(name, s, PARAMS.split.test_fraction)]
    assert len(alarms) <= 0.01 * len(seeds), f"{name}: false alarms on seeds {alarms}"


def test_half_std_shift_of_a_few_features_is_caught_in_95_percent():
    raw = dataset("digits")
    parts = split_indices(raw.frame["label"].to_numpy(), None, PARAMS.split.val_fraction, 0.3, 0)
    assert len(parts.test) >= 500 and len(parts.train) >= PARAMS.validation.drift_switch_rows
    seeds = range(100)
    caught = sum(drifted("digits", s, 0.3, "features", 5) for s in seeds)
    assert caught >= 0.95 * len(seeds)


def test_small_data_uses_the_p_value_and_still_sees_a_shift():
    caught = sum(drifted("breast_cancer", s, 0.15, "features", 3) for s in range(40))
    assert caught >= 0.9 * 40


def test_brightened_test_images_of_an_npz_source_are_caught():
    seeds = range(100)
    caught = sum(drifted("digits_npz", s, 0.15, "brighten") for s in seeds)
    assert caught >= 0.95 * len(seeds)
