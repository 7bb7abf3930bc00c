"""The register gate's comparison with the champion, on test rows the champion never saw.

When the candidate's test data is the champion's own test split, the champion's score recorded
at its registration is reused. Otherwise (the data was reshuffled, grew or changed) the champion
is rescored, but only on the test rows its run's row digests (``nnops.lineage``) say it did not
train on, and the candidate with it; with too few such rows the comparison is refused.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from nnops.lineage import read_seen, unseen_mask
from nnops.registry import (
    CHAMPION,
    TEST_ACCURACY_TAG,
    TEST_HASH_TAG,
    model_feature_names,
    score_model,
)

log = logging.getLogger("nnops.register")


def champion_comparison(
    client: Any, cand: Any, champion: Any, test_hash: str, min_rows: int
) -> dict[str, Any]:
    """The champion's test accuracy on the candidate's test data, scored fairly.

    Read from the tags recorded at the champion's registration when the test data is the same
    (its own test split, which it never trained on). Else the champion is loaded and scored
    (this imports TensorFlow) on the test rows it did not train on, found with the row digests
    its run logged; when it trained on some, the candidate is rescored on
    the same rows. Fewer than ``min_rows`` such rows: the comparison is refused.

    Args:
        client: an ``mlflow.MlflowClient``.
        cand: the ``nnops.register.Candidate`` (its test split, name, version, accuracy).
        champion: the champion's model version.
        test_hash: ``test_data_hash`` of the candidate's test split.
        min_rows: ``register.min_unseen_test_rows``.

    Returns:
        ``version``, ``accuracy``, ``candidate_accuracy``, ``rows`` (test rows compared on) and
        ``overlap`` (test rows the champion trained on; None when unknown), or ``refused``.
    """
    x, y = cand.test
    out: dict[str, Any] = {"version": str(champion.version), "rows": len(y), "overlap": 0,
                           "candidate_accuracy": cand.test_accuracy}  # fmt: skip
    if len(y) < min_rows:  # a handful of rows: either model can score 1.0 or 0.0 by chance
        return out | {"accuracy": None, "refused": (
            f"no fair comparison: the test split holds only {len(y)} rows, fewer than "
            f"register.min_unseen_test_rows={min_rows}; the model is not promoted over champion "
            f"version {champion.version} (a larger split.test_fraction, or `nnops promote "
            "VERSION --reason ...` on record)")}  # fmt: skip
    tags = dict(champion.tags or {})
    if tags.get(TEST_HASH_TAG) == test_hash and tags.get(TEST_ACCURACY_TAG):
        log.info("champion version %s: test accuracy on this test data recorded at its "
                 "registration", champion.version)  # fmt: skip
        return out | {"accuracy": float(tags[TEST_ACCURACY_TAG])}
    uri = f"models:/{cand.name}@{CHAMPION}"
    names = model_feature_names(champion.source or f"models:/{cand.name}/{champion.version}")
    x = in_champion_order(x, cand, names)
    seen = read_seen(client, champion.run_id)
    if seen is None:
        log.warning("scoring champion version %s on all %d test rows: its run logged no "
                    "digests of its training rows, so it may have trained on some of them",
                    champion.version, len(y))  # fmt: skip
        return out | {"accuracy": score_model(uri, x, y), "overlap": None}
    keep = unseen_mask(x, seen)
    overlap, rows = int((~keep).sum()), int(keep.sum())
    if not overlap:
        log.info("scoring champion version %s on this test data (none of its rows were among "
                 "the champion's training rows)", champion.version)  # fmt: skip
        return out | {"accuracy": score_model(uri, x, y)}
    what = (f"champion version {champion.version} trained on {overlap} of the {len(y)} test rows"
            f" (the data was reshuffled or grew)")  # fmt: skip
    if rows < min_rows:
        return out | {"accuracy": None, "overlap": overlap, "rows": rows, "refused": (
            f"no fair comparison: {what}, leaving {rows} it did not see, fewer than "
            f"register.min_unseen_test_rows={min_rows}; the model is not promoted over it "
            "(`nnops promote VERSION --reason ...` promotes it anyway, on record)")}  # fmt: skip
    log.warning("%s; both models are compared on the other %d", what, rows)
    return out | {
        "accuracy": score_model(uri, x[keep], y[keep]),
        "candidate_accuracy": score_model(
            f"models:/{cand.name}/{cand.version}", cand.test[0][keep], y[keep]
        ),
        "rows": rows,
        "overlap": overlap,
    }


def in_champion_order(x: np.ndarray, cand: Any, champion_names: list[str] | None) -> np.ndarray:
    """The candidate's test rows with their columns in the order the champion takes them.

    The same columns in another order are the same task (``registry.column_signature``), but a
    model reads its inputs by position, so the champion is scored (and its row digests looked
    up) on the columns rearranged to its own order.

    Args:
        x: the candidate's raw test features.
        cand: the candidate (``task["feature_names"]``, its column order).
        champion_names: the champion's input columns in order; None when it did not record them.
    """
    mine = list((cand.task or {}).get("feature_names") or [])
    if not champion_names or not mine or champion_names == mine:
        return x
    if sorted(champion_names) != sorted(mine):
        return x  # another task: the caller does not compare such a champion
    where = {name: i for i, name in enumerate(mine)}
    log.info("the champion takes the same columns in another order: rearranged for scoring")
    return x[:, [where[name] for name in champion_names]]
