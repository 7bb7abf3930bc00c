"""Gated promotion in the MLflow Model Registry: register every model, promote only the good ones.

The gate (pure, ``gate_checks``) applies absolute bounds from ``params.register`` and compares the
candidate with the current ``@champion`` on the same test data. ``decide`` runs it against the
registry (``nnops.registry``) and keeps the registry consistent if it fails midway. Rerunning after
a failure finds the version already registered for the run and finishes the job.

The champion's score on this test data is read from the tags recorded at its registration when
the test data is the same (its digest matches); only otherwise is the champion loaded and scored,
the one path that imports TensorFlow. The candidate's score is the evaluate stage's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nnops import comparison
from nnops.catalog import data_hash
from nnops.config import MlflowParams, RegisterParams
from nnops.errors import NnopsError
from nnops.registry import (
    CHALLENGER,
    CHAMPION,
    COLUMNS_TAG,
    DECISION_TAG,
    TAG_PREFIX,
    TASK_TAG,
    TEST_ACCURACY_TAG,
    TEST_HASH_TAG,
    Step,
    alias_version,
    champion_task,
    column_signature,
    describe_task,
    mark_version,
    new_lineage_reason,
    promote,
    record_rejection,
    same_task,
    task_of,
    task_signature,
)

log = logging.getLogger(__name__)

GOOD_FIT = "good fit"


@dataclass(frozen=True)
class Gate:
    """One promotion check: what was measured, against what, and by how much it passed or failed."""

    name: str
    passed: bool
    value: float | str | None
    threshold: float | str | None
    margin: float | None
    """Value minus threshold for numeric gates: negative means it failed by that much."""
    detail: str


def gate_checks(
    test_accuracy: float,
    verdict: str,
    params: RegisterParams,
    champion: Mapping[str, Any] | None = None,
) -> list[Gate]:
    """Check a candidate against the absolute bounds and the current champion.

    Args:
        test_accuracy: the candidate's test accuracy from the evaluate stage.
        verdict: the candidate's fit verdict.
        params: the ``register`` params section.
        champion: None when there is no champion to beat (first model, or comparison off);
            else ``version``, ``accuracy`` (champion on the test data) and ``candidate_accuracy``
            (the candidate scored the same way on the same data), with ``rows`` and ``overlap``
            when the champion trained on some test rows (both were scored on the others), or
            ``refused`` saying why no fair comparison is possible (the gate then fails).
    """
    margin = test_accuracy - params.min_test_accuracy
    gates = [
        Gate(
            name="min_test_accuracy",
            passed=margin >= 0,
            value=test_accuracy,
            threshold=params.min_test_accuracy,
            margin=margin,
            detail=(
                f"test accuracy {test_accuracy:.4f} "
                + (">=" if margin >= 0 else "<")
                + f" register.min_test_accuracy {params.min_test_accuracy}"
                + ("" if margin >= 0 else f" (short by {-margin:.4f})")
            ),
        )
    ]
    if params.require_good_fit:
        ok = verdict == GOOD_FIT
        gates.append(
            Gate(
                name="require_good_fit",
                passed=ok,
                value=verdict,
                threshold=GOOD_FIT,
                margin=None,
                detail=f"fit verdict is {verdict!r}"
                + ("" if ok else f"; register.require_good_fit asks for {GOOD_FIT!r}"),
            )
        )
    if params.compare_to_champion and champion is not None and champion.get("refused"):
        gates.append(
            Gate(
                name="not_worse_than_champion",
                passed=False,
                value=None,
                threshold=None,
                margin=None,
                detail=str(champion["refused"]),
            )
        )
    elif params.compare_to_champion and champion is not None:
        bound = float(champion["accuracy"]) - params.max_regression
        cand = float(champion["candidate_accuracy"])
        diff = cand - bound
        gates.append(
            Gate(
                name="not_worse_than_champion",
                passed=diff >= 0,
                value=cand,
                threshold=bound,
                margin=diff,
                detail=(
                    f"test accuracy {cand:.4f} against champion version {champion['version']} "
                    f"at {float(champion['accuracy']):.4f} (allowed regression "
                    f"register.max_regression={params.max_regression})"
                    + (
                        f" on the {champion['rows']} test rows the champion did not train on "
                        f"(it trained on {champion['overlap']})"
                        if champion.get("overlap")
                        else ""
                    )
                    + ("" if diff >= 0 else f": worse by {-diff:.4f}")
                ),
            )
        )
    return gates


def decision_reason(gates: list[Gate], first_model: bool) -> str:
    """Say in one sentence why a candidate is promoted or not.

    Args:
        gates: the checks as returned by ``gate_checks``.
        first_model: True when there was no champion to compare with.
    """
    failed = [g for g in gates if not g.passed]
    if failed:
        return "not promoted: " + "; ".join(f"{g.name} failed ({g.detail})" for g in failed)
    names = ", ".join(g.name for g in gates)
    baseline = " (first model: no champion to compare with)" if first_model else ""
    return f"promoted: passed {names}{baseline}"


def promotion_tags(
    run_id: str,
    metrics: Mapping[str, Any],
    gates: list[Gate],
    reason: str,
    promoted: bool,
    previous_champion: str | None,
    class_names: list[str] | None,
    now: datetime | None = None,
) -> dict[str, str]:
    """The tags that record a gate decision on a model version (all values are strings).

    Args:
        run_id: the MLflow run that produced the model.
        metrics: the content of ``reports/metrics.json``.
        gates: the gate checks.
        reason: the decision in words.
        promoted: whether the version becomes champion.
        previous_champion: the version it replaces, if any.
        class_names: names of the output classes, for batch prediction.
        now: the decision time (UTC now when omitted).
    """
    when = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    tags = {
        "run_id": run_id,
        "promoted": str(promoted).lower(),
        "decided_at": when,
        "reason": reason,
        "gates": json.dumps([asdict(g) for g in gates], sort_keys=True),
        "fit": str(metrics.get("fit", {}).get("verdict", "unknown")),
    }
    for split in ("train", "val", "test"):
        for key, value in (metrics.get(split) or {}).items():
            tags[f"{split}.{key}"] = f"{float(value):.6g}"
    if promoted:
        tags["promoted_at"] = when
        tags["previous_champion"] = previous_champion or "none"
    if class_names is not None:
        tags["class_names"] = json.dumps(class_names)
    return {TAG_PREFIX + k: v for k, v in tags.items()}


def test_data_hash(x: np.ndarray, y: np.ndarray) -> str:
    """A digest of the test split's content (shapes, dtypes and values), not of its file.

    Args:
        x: raw test features.
        y: test class indices.
    """
    return data_hash({"test": {"x_raw": x, "y": y}})


@dataclass(frozen=True)
class Candidate:
    """A registered version waiting for the gate, and what the evaluate stage measured of it."""

    name: str
    """The registered model name."""
    version: str
    run_id: str
    """The MLflow run that produced it."""
    metrics: Mapping[str, Any]
    """The content of ``reports/metrics.json``."""
    test: tuple[np.ndarray, np.ndarray]
    """Raw test features and labels: the champion is scored on them when its score is unknown."""
    class_names: list[str] | None = None
    task: Mapping[str, Any] | None = None
    """``task_of`` the data: a champion of another task is not compared with (new lineage)."""

    @property
    def test_accuracy(self) -> float:
        """The evaluate stage's test accuracy (a clear error when it is missing)."""
        try:
            return float(self.metrics["test"]["accuracy"])
        except (KeyError, TypeError, ValueError):
            raise NnopsError(
                "metrics: no numeric test.accuracy (did the evaluate stage run?)"
            ) from None

    @property
    def test_hash(self) -> str:
        """``test_data_hash`` of the test split."""
        return test_data_hash(*self.test)


def decide(
    client: Any, cand: Candidate, params: RegisterParams, on_step: Step | None = None
) -> dict[str, Any]:
    """Gate a registered version, record the decision in the registry, return the decision record.

    A version is never left registered without a record: until the gate's tags are complete its
    ``nnops.decision`` tag says ``pending`` or ``failed``, and rerunning the register stage
    finishes the job.

    Args:
        client: an ``mlflow.MlflowClient``.
        cand: the version to gate and its evaluation.
        params: the ``register`` params section.
        on_step: called after each registry write with a short description.
    """
    name, version = cand.name, cand.version
    test_hash = cand.test_hash
    marks = {TEST_HASH_TAG: test_hash, DECISION_TAG: "pending"}
    if cand.task is not None:
        marks |= {TASK_TAG: task_signature(cand.task), COLUMNS_TAG: column_signature(cand.task),
                  TASK_TAG + "_description": describe_task(cand.task)}  # fmt: skip
    mark_version(client, name, version, marks)
    try:
        record = _gate(client, cand, params, test_hash, on_step)
    except BaseException as exc:
        try:
            mark_version(client, name, version, {DECISION_TAG: "failed",
                                                 TAG_PREFIX + "error": str(exc)[:500]})  # fmt: skip
        except Exception:  # the store is gone: the pending tag stays, which says as much
            log.debug("could not mark %s version %s failed", name, version)
        raise
    decision = "promoted" if record["promoted"] else "rejected"
    mark_version(client, name, version, {DECISION_TAG: decision})
    return record


def _new_lineage(client: Any, cand: Candidate, current: Any) -> str | None:
    """Why the candidate is not compared with the champion ``current``; None when it is."""
    if cand.task is None:
        return None
    theirs = champion_task(client, cand.name, current)
    if same_task(cand.task, theirs):
        return None
    return new_lineage_reason(cand.name, current, theirs or {}, cand.task)


def decision_record(
    cand: Candidate,
    params: RegisterParams,
    previous: str | None,
    champion: Mapping[str, Any] | None = None,
    new_lineage: str | None = None,
) -> dict[str, Any]:
    """Gate the candidate and say what happens: the content of ``reports/registry.json``.

    Args:
        cand: the candidate.
        params: the ``register`` params section.
        previous: the champion's version, None when there is none.
        champion: the comparison for ``gate_checks`` (None: not compared).
        new_lineage: why the champion is not compared with (another task), if so.
    """
    already = previous == str(cand.version)
    verdict = str((cand.metrics.get("fit") or {}).get("verdict", "unknown"))
    gates = [] if already else gate_checks(cand.test_accuracy, verdict, params, champion)
    promoted = already or all(g.passed for g in gates)
    reason = "already champion" if already else decision_reason(gates, previous is None)
    if new_lineage and not already:
        reason += f" ({new_lineage})"
    return {
        "registered": True,
        "model_name": cand.name,
        "version": str(cand.version),
        "run_id": cand.run_id,
        "model_uri": f"models:/{cand.name}/{cand.version}",
        "promoted": promoted,
        "alias": CHAMPION if promoted else (CHALLENGER if params.challenger_alias else None),
        "previous_champion": None if already else previous,
        "reason": reason,
        "gates": [asdict(g) for g in gates],
        "failed_gates": [g.name for g in gates if not g.passed],
        "champion_accuracy": champion["accuracy"] if champion else None,
        "compared_rows": champion.get("rows") if champion else None,
        "champion_trained_on_test_rows": champion.get("overlap") if champion else None,
        "new_lineage": new_lineage,
        "task": dict(cand.task) if cand.task is not None else None,
    }


def recorded_decision(tags: Mapping[str, str]) -> dict[str, Any]:
    """The gates, reason and previous champion ``promotion_tags`` recorded on a version, for the
    record of a rerun that finds it already champion; empty when it has none.

    Args:
        tags: the version's tags.
    """
    if not tags.get(TAG_PREFIX + "gates"):
        return {}
    try:
        gates = json.loads(tags[TAG_PREFIX + "gates"])
    except ValueError:
        return {}
    previous = tags.get(TAG_PREFIX + "previous_champion")
    return {
        "gates": gates,
        "failed_gates": [g["name"] for g in gates if not g.get("passed")],
        "reason": f"already champion ({tags.get(TAG_PREFIX + 'reason', 'recorded earlier')})",
        "previous_champion": None if previous in (None, "none") else previous,
    }


def _gate(
    client: Any, cand: Candidate, params: RegisterParams, test_hash: str, on_step: Step | None
) -> dict[str, Any]:
    name, version = cand.name, cand.version
    mark_version(client, name, version, {TEST_ACCURACY_TAG: repr(cand.test_accuracy)})
    current = alias_version(client, name, CHAMPION)
    previous = str(current.version) if current is not None else None
    already = previous == str(version)
    champion = None
    new_lineage = None if previous is None or already else _new_lineage(client, cand, current)
    if new_lineage:
        log.warning("%s", new_lineage)
    if previous is not None and not already and params.compare_to_champion and not new_lineage:
        champion = comparison.champion_comparison(
            client, cand, current, test_hash, params.min_unseen_test_rows
        )
    record = decision_record(cand, params, previous, champion, new_lineage)
    if already:  # a rerun (after an interrupted register): say again why it was promoted
        record |= recorded_decision(dict(current.tags or {}))
    if not already:
        tags = promotion_tags(
            cand.run_id,
            cand.metrics,
            [Gate(**g) for g in record["gates"]],
            record["reason"],
            record["promoted"],
            previous,
            cand.class_names,
        )
        if record["promoted"]:
            promote(client, name, version, tags, on_step)
        else:
            record_rejection(client, name, version, tags, params.challenger_alias, on_step)
    return record


def register_run(
    info: Any,
    metrics: Mapping[str, Any],
    test: tuple[np.ndarray, np.ndarray],
    meta: Mapping[str, Any],
    params: RegisterParams,
    mlflow_params: MlflowParams,
) -> dict[str, Any]:
    """Register the training run's model, gate it and tag the run with the outcome.

    One register at a time per store (queued experiments, pipelines on several machines): the
    champion compared against is still the champion when the alias moves.

    Args:
        info: ``models/run.json`` (a ``nnops.tracking.RunInfo``).
        metrics: the content of ``reports/metrics.json``.
        test: raw test features and labels.
        meta: the processed data's ``meta.json``.
        params: the ``register`` params section.
        mlflow_params: the ``mlflow`` params section.
    """
    import mlflow

    from nnops.lease import register_lease
    from nnops.registry import register_version
    from nnops.tracking import resume_run, store_uri

    if not info.model_uri:
        raise NnopsError("models/run.json: no model_uri; the train stage must log the model")
    uri = store_uri(info, mlflow_params.connect_timeout_s)
    client = mlflow.MlflowClient(uri)
    task = task_of(meta)
    with register_lease(uri, params.model_name):
        version = register_version(client, params.model_name, info.model_uri, info.run_id).version
        cand = Candidate(params.model_name, str(version), info.run_id, metrics, test,
                         meta.get("class_names"), task)  # fmt: skip
        record = decide(client, cand, params, lambda step: log.debug("registry: %s", step))
    with resume_run(info, mlflow_params.connect_timeout_s):
        mlflow.set_tags(
            {
                "registry.version": record["version"],
                "registry.promoted": str(record["promoted"]).lower(),
                TASK_TAG: task_signature(task),
                COLUMNS_TAG: column_signature(task),
            }
        )
    return record
