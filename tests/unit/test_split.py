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


def forty_classes_of_three() -> np.ndarray:
    return labels_with_shares([3] * 40)


def classes_in(y: np.ndarray, rows: np.ndarray) -> set[int]:
    return {int(c) for c in np.unique(y[rows])}


def test_equal_remainders_go_to_classes_drawn_from_the_seed_not_the_lowest_indices():
    y = forty_classes_of_three()  # test takes 18 rows, one each from 18 of the 40 classes
    seen: set[int] = set()
    for seed in (1, 2, 3, 42):
        test = classes_in(y, split_indices(y, None, 0.15, 0.15, seed).test)
        assert len(test) == 18 and test != set(range(18)), seed
        seen |= test
    assert seen & set(range(33, 40))  # classes a stable sort never put in test or val
    assert len(seen) > 30


def test_no_class_is_favoured_for_the_extra_rows_over_many_seeds():
    y = forty_classes_of_three()
    in_test = np.zeros(40, dtype=np.int64)
    for seed in range(100):
        in_test += np.bincount(y[split_indices(y, None, 0.15, 0.15, seed).test], minlength=40)
    assert in_test.min() >= 25 and in_test.max() <= 65  # 45 expected for each class


def test_extra_validation_rows_of_a_small_balanced_set_vary_with_the_seed():
    y = labels_with_shares([20, 20, 20])  # val: 8 rows for 3 classes, two classes get a third
    favoured = set()
    for seed in range(10):
        val = split_indices(y, None, 0.15, 0.15, seed).val
        per_class = np.bincount(y[val], minlength=3)
        assert sorted(per_class) == [2, 3, 3]
        favoured.add(tuple(np.flatnonzero(per_class == 3)))
    assert len(favoured) == 3  # not always classes 0 and 1


def test_random_tie_breaks_keep_the_split_reproducible_and_its_sizes():
    y = forty_classes_of_three()
    first, again = split_indices(y, None, 0.15, 0.15, 5), split_indices(y, None, 0.15, 0.15, 5)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for seed in range(20):
        parts = split_indices(y, None, 0.15, 0.15, seed)
        assert tuple(map(len, parts)) == (87, 15, 18)  # round(.15*120), then round(.15*102)
        assert np.bincount(y[parts.test], minlength=40).max() == 1


def test_each_class_gets_the_floor_or_ceiling_of_its_share_and_totals_are_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(5, 40, size=int(rng.integers(2, 12)))
        y = rng.permutation(np.repeat(np.arange(len(counts)), counts))
        test_fraction = float(rng.uniform(0.1, 0.4))
        parts = split_indices(y, None, 0.2, test_fraction, int(rng.integers(1000)))
        total = round(test_fraction * len(y))
        assert len(parts.test) == total
        share = counts * total / counts.sum()
        got = np.bincount(y[parts.test], minlength=len(counts))
        assert np.all(got >= np.floor(share) - 1e-9) and np.all(got <= np.ceil(share) + 1e-9)


def test_a_test_split_too_small_for_every_class_is_a_warning(caplog):
    y = forty_classes_of_three()
    with caplog.at_level("WARNING", logger="nnops.split"):
        parts = split_indices(y, None, 0.15, 0.15, seed=0)
    assert len(parts.test) == 18
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("test split gets 18 rows for 40 classes" in m for m in messages), messages
    assert any("22 classes have no test rows" in m for m in messages), messages
    assert any("25 classes have no val rows" in m for m in messages), messages
    assert all("fewer classes or more rows" in m for m in messages)


def test_no_warning_when_every_partition_holds_every_class(caplog):
    with caplog.at_level("WARNING", logger="nnops.split"):
        split_indices(labels_with_shares([50, 30, 20]), None, 0.2, 0.1, seed=0)
    assert not caplog.records
