"""The one seeded, stratified train/val/test split that validate and preprocess share.

Plain numpy, so that the validate stage can draw the same partitions as preprocess without
importing scikit-learn.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from nnops.errors import NnopsError

log = logging.getLogger(__name__)


class Split(NamedTuple):
    """Row indices of each partition, each sorted ascending."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _allocate(counts: np.ndarray, total: int, ties: np.random.Generator) -> np.ndarray:
    """Share ``total`` rows among classes in proportion to ``counts`` (largest remainder).

    Each class gets the floor of its exact share; the rows left over go to the classes with the
    largest remainders, and classes whose remainders are equal are ordered at random by ``ties``
    (a stable sort would always favour the lowest class indices, whatever the seed). The
    arithmetic is in integers, so equal remainders compare equal.

    Args:
        counts: rows per class.
        total: how many rows to take over all classes.
        ties: the random generator that orders classes with equal remainders.
    """
    counts = np.asarray(counts, dtype=np.int64)
    scaled = counts * total
    take, remainder = np.divmod(scaled, int(counts.sum()))
    short = total - int(take.sum())
    if short > 0:
        order = np.lexsort((ties.permutation(len(counts)), -remainder))
        take[order[:short]] += 1
    return np.minimum(take, counts)


def _stratified_holdout(
    labels: np.ndarray,
    pool: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    ties: np.random.Generator,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` into (kept, held out) with ``fraction`` of each class held out.

    Logs a warning when the held-out rows miss some of the pool's classes.

    Args:
        labels: class index of every row.
        pool: the row indices to split.
        fraction: the share of ``pool`` to hold out.
        rng: the random generator that picks the rows of each class.
        ties: the random generator that orders classes with equal remainders.
        name: the held-out partition (``"test"`` or ``"val"``), for the warning.
    """
    classes, counts = np.unique(labels[pool], return_counts=True)
    total = int(round(fraction * len(pool)))
    take = _allocate(counts, total, ties)
    missing = int(np.count_nonzero(take == 0))
    if missing and total > 0:  # no rows at all is the empty-partition error instead
        log.warning(
            "the %s split gets %d rows for %d classes, so %d %s no %s rows; "
            "use fewer classes or more rows (or a larger split.%s_fraction)",
            name,
            total,
            len(classes),
            missing,
            "class has" if missing == 1 else "classes have",
            name,
            name,
        )
    held = []
    for cls, n in zip(classes, take, strict=True):
        members = pool[labels[pool] == cls]
        held.append(rng.permutation(members)[:n])
    held_out = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    kept = np.setdiff1d(pool, held_out, assume_unique=True)
    return kept, held_out


def split_indices(
    labels: np.ndarray,
    origin: np.ndarray | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> Split:
    """Return seeded, stratified train/val/test row indices.

    When ``origin`` marks rows as ``"test"`` (the source's own test split), those rows are the
    test partition and ``test_fraction`` is not used; validation rows are drawn from the rest.
    Each held-out partition gets exactly ``round(fraction * pool)`` rows, shared among classes
    by largest remainder; which of the classes with equal remainders get the extra rows is drawn
    from ``seed``, so the same seed gives the same split and no class is always favoured. A
    partition too small to hold a row of every class is logged as a warning, not an error.

    Args:
        labels: class index of every row.
        origin: ``"train"``/``"test"`` per row, or None when the source has no test split.
        val_fraction: share of the training pool held out for validation.
        test_fraction: share of all rows held out for test (no source test split only).
        seed: the random seed.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        raise NnopsError("cannot split an empty dataset")
    rng = np.random.default_rng(seed)
    ties = rng.spawn(1)[0]  # its own stream of the seed: rng's row draws stay as they were
    everything = np.arange(n, dtype=np.int64)
    if origin is not None and np.any(np.asarray(origin) == "test"):
        is_test = np.asarray(origin) == "test"
        pool, test = everything[~is_test], everything[is_test]
    else:
        pool, test = _stratified_holdout(labels, everything, test_fraction, rng, ties, "test")
    train, val = _stratified_holdout(labels, pool, val_fraction, rng, ties, "val")
    if len(train) == 0 or len(val) == 0 or len(test) == 0:
        raise NnopsError(
            f"split of {n} rows leaves an empty partition (train={len(train)}, val={len(val)}, "
            f"test={len(test)}); use more data or larger split.val_fraction/split.test_fraction"
        )
    log.debug("split %d rows: train=%d val=%d test=%d", n, len(train), len(val), len(test))
    return Split(train=train, val=val, test=test)
