"""The shared train/val/test split: stratified, seeded, disjoint, keeps a source's test split."""

from __future__ import annotations

import numpy as np
import pytest

from nnops.errors import NnopsError
from nnops.split import split_indices

pytestmark = pytest.mark.unit


def labels_with_shares(counts: list[int]) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def test_partitions_are_disjoint_and_cover_every_row():
    y = labels_with_shares([50, 30, 20])
    parts = split_indices(y, None, 0.2, 0.1, seed=0)
    joined = np.concatenate(parts)
    assert len(joined) == len(y) == len(np.unique(joined))
    assert (len(parts.test), len(parts.val)) == (10, 18)  # 10% of 100, then 20% of 90


def test_each_partition_keeps_the_class_shares():
    y = labels_with_shares([500, 300, 200])
    parts = split_indices(y, None, 0.15, 0.15, seed=3)
    for rows in parts:
        shares = np.bincount(y[rows], minlength=3) / len(rows)
        np.testing.assert_allclose(shares, [0.5, 0.3, 0.2], atol=0.01)


def test_same_seed_same_split_other_seed_other_split():
    y = labels_with_shares([40, 40, 40])
    first, again = split_indices(y, None, 0.2, 0.2, 7), split_indices(y, None, 0.2, 0.2, 7)
    other = split_indices(y, None, 0.2, 0.2, 8)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.test, other.test)


def test_source_test_split_is_kept_and_val_comes_from_train_rows():
    y = labels_with_shares([60, 60])
    origin = np.array(["train"] * 100 + ["test"] * 20)
    parts = split_indices(y, origin, 0.25, 0.5, seed=0)
    np.testing.assert_array_equal(parts.test, np.arange(100, 120))
    assert len(parts.val) == 25 and parts.val.max() < 100
    assert len(parts.train) == 75


def test_too_few_rows_for_a_partition_is_a_clear_error():
    with pytest.raises(NnopsError, match="empty partition"):
        split_indices(np.array([0, 1]), None, 0.1, 0.1, seed=0)
