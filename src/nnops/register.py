"""Gated promotion in the MLflow Model Registry: register every model, promote only the good ones.

The gate (pure, ``gate_checks``) applies absolute bounds from ``params.register`` and compares the
candidate with the current ``@champion`` on the same test data. The registry edge (the functions
taking an ``MlflowClient``) keeps the registry consistent if it fails midway: a promotion writes
all its tags on the new version first and moves the ``champion`` alias last, so a version never
holds the alias without the record of why; an alias names one version at a time, so there are never
two champions. Rerunning after a failure finds the version already registered for the run and
finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nnops.config import RegisterParams
from nnops.errors import NnopsError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
GOOD_FIT = "good fit"
TAG_PREFIX = "nnops."
TASK_TAG = TAG_PREFIX + "task"
"""Tag on each registered version and its run: a digest of the input schema and label set."""
DECISION_TAG = TAG_PREFIX + "decision"
"""``pending`` from registration until the gate's record is complete, then ``promoted``,
``rejected`` or ``failed`` (the gate could not finish; rerun register to complete it)."""


def task_of(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The task a model solves: its input columns and its classes, from ``meta.json``.

    Args:
        meta: the processed data's metadata (``n_features``, ``feature_names``, ``class_names``).
    """
    return {
        "n_features": int(meta.get("n_features") or len(meta.get("feature_names") or [])),
        "feature_names": [str(f) for f in meta.get("feature_names") or []],
        "class_names": [str(c) for c in meta.get("class_names") or []],
    }


def task_signature(task: Mapping[str, Any]) -> str:
    """A short digest that two models share exactly when they solve the same task.

    Args:
        task: as returned by ``task_of``.
    """
    text = json.dumps({k: task[k] for k in sorted(task)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_task(task: Mapping[str, Any]) -> str:
    """Say in words what a task takes and predicts, e.g. ``4 features (a, b, ...), 3 classes``.

    Args:
        task: as returned by ``task_of``.
    """
    names = task.get("feature_names") or []
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    classes = task.get("class_names") or []
    cls = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return f"{task.get('n_features')} features ({shown}), {len(classes)} classes ({cls})"


def quote_filter(value: str) -> str:
    """Quote a value for an MLflow search filter (names may hold a quote: ``bob's model``).

    Args:
        value: the literal value.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise NnopsError(
        f"register.model_name {value!r} holds both quote characters; MLflow filters cannot "
        "express it, use at most one kind"
    )


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
            (the candidate scored the same way on the same data).
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
    if params.compare_to_champion and champion is not None:
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


# --- Registry edge: the only functions here that talk to MLflow ---------------------------------


def _mlflow_error(action: str, exc: Exception) -> NnopsError:
    return NnopsError(f"MLflow registry: {action} failed ({type(exc).__name__}: {exc})")


def version_for_run(client: Any, name: str, run_id: str, source: str) -> Any | None:
    """Return the version of ``name`` already registered from this run and source, if any.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        run_id: the MLflow run id.
        source: the model URI that was registered.
    """
    versions = client.search_model_versions(
        f"name = {quote_filter(name)} and run_id = {quote_filter(run_id)}"
    )
    same = [v for v in versions if v.source == source or not source]
    return max(same, key=lambda v: int(v.version)) if same else None


def register_version(client: Any, name: str, model_uri: str, run_id: str) -> Any:
    """Register the run's model under ``name`` (or reuse the version registered earlier).

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        model_uri: the logged model's URI (``models:/m-...`` or ``runs:/<id>/model``).
        run_id: the MLflow run id.
    """
    import mlflow

    try:
        existing = version_for_run(client, name, run_id, model_uri)
    except Exception as exc:
        raise _mlflow_error(f"searching {name!r} for run {run_id}", exc) from exc
    if existing is not None:
        log.info("run %s is already registered as %s version %s", run_id, name, existing.version)
        return existing
    try:
        version = mlflow.register_model(model_uri, name)
    except Exception as exc:  # MlflowException, connection errors
        raise _mlflow_error(f"registering {model_uri} as {name!r}", exc) from exc
    log.info("registered %s as %s version %s", model_uri, name, version.version)
    return version


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    """Return the version that holds ``alias``, or None when no version does.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        alias: the alias, e.g. ``champion``.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise _mlflow_error(f"looking up {name}@{alias}", exc) from exc
    except Exception as exc:  # connection errors
        raise _mlflow_error(f"looking up {name}@{alias}", exc) from exc


def score_model(model_uri: str, x: np.ndarray, y: np.ndarray) -> float:
    """Load a model through MLflow's generic interface and return its accuracy on ``(x, y)``.

    Args:
        model_uri: e.g. ``models:/nnops-mlp@champion``.
        x: raw test features.
        y: test class indices.
    """
    from nnops.distribute import import_tensorflow

    import_tensorflow()  # without its C++ start-up noise
    import keras
    import mlflow

    keras.config.disable_interactive_logging()  # no progress bars from the pyfunc wrapper
    try:
        model = mlflow.pyfunc.load_model(model_uri)
        proba = np.asarray(model.predict(x))
    except Exception as exc:
        raise _mlflow_error(f"loading and scoring {model_uri}", exc) from exc
    if proba.ndim != 2 or len(proba) != len(y):
        raise NnopsError(f"{model_uri}: predicted shape {proba.shape} for {len(y)} test rows")
    return float((proba.argmax(axis=1) == y).mean())


Step = Callable[[str], None]


def _steps(client: Any, name: str, version: str, tags: Mapping[str, str], on_step: Step | None):
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
        if on_step:
            on_step(f"tag {key}")


def promote(
    client: Any,
    name: str,
    version: str,
    tags: Mapping[str, str],
    on_step: Step | None = None,
) -> None:
    """Record the decision on the version, then make it ``@champion`` (tags first, alias last).

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        version: the version to promote.
        tags: the promotion record (``promotion_tags``).
        on_step: called after each registry write with a short description (progress logging).
    """
    try:
        _steps(client, name, version, tags, on_step)
        client.set_registered_model_alias(name, CHAMPION, version)
        if on_step:
            on_step(f"alias {CHAMPION}")
    except NnopsError:
        raise
    except Exception as exc:
        raise _mlflow_error(
            f"promoting {name} version {version} (the champion alias is unchanged unless this "
            "failed after moving it; rerun the register stage to finish)",
            exc,
        ) from exc
    # A promoted challenger stops being the challenger (best done last: the champion is set).
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        try:
            client.delete_registered_model_alias(name, CHALLENGER)
        except Exception as exc:
            raise _mlflow_error(
                f"removing @{CHALLENGER} from {name} version {version}", exc
            ) from exc


def record_rejection(
    client: Any,
    name: str,
    version: str,
    tags: Mapping[str, str],
    challenger: bool,
    on_step: Step | None = None,
) -> None:
    """Record a failed gate on the version and optionally make it ``@challenger``.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        version: the version that failed the gate.
        tags: the decision record (``promotion_tags``).
        challenger: whether to move the ``challenger`` alias to this version.
        on_step: called after each registry write with a short description.
    """
    try:
        _steps(client, name, version, tags, on_step)
        if challenger:
            client.set_registered_model_alias(name, CHALLENGER, version)
            if on_step:
                on_step(f"alias {CHALLENGER}")
    except Exception as exc:
        raise _mlflow_error(
            f"recording the gate decision on {name} version {version}", exc
        ) from exc


def champion_history(client: Any, name: str) -> list[dict[str, str]]:
    """List every version ever promoted, oldest first, with its promotion record.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
    """
    versions = client.search_model_versions(f"name = {quote_filter(name)}")
    rows = []
    for v in versions:
        tags = dict(v.tags or {})
        if tags.get(TAG_PREFIX + "promoted") == "true":
            rows.append(
                {
                    "version": str(v.version),
                    "promoted_at": tags.get(TAG_PREFIX + "promoted_at", ""),
                    "previous_champion": tags.get(TAG_PREFIX + "previous_champion", ""),
                    "test_accuracy": tags.get(TAG_PREFIX + "test.accuracy", ""),
                    "run_id": tags.get(TAG_PREFIX + "run_id", ""),
                    "reason": tags.get(TAG_PREFIX + "reason", ""),
                    # search results may omit aliases; the single-version lookup has them
                    "aliases": ",".join(client.get_model_version(name, v.version).aliases or []),
                }
            )
    return sorted(rows, key=lambda r: (r["promoted_at"], int(r["version"])))


def mark_version(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    """Write bookkeeping tags on a version (its task, its decision state).

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        version: the version.
        tags: tag name to value.
    """
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    except Exception as exc:
        raise _mlflow_error(f"tagging {name} version {version}", exc) from exc


def champion_task(client: Any, name: str, champion: Any) -> dict[str, Any] | None:
    """The task the champion solves: its task tag, or for versions registered before task tags
    existed, its input width (from the model signature) and recorded class names.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        champion: the champion's model version.
    """
    tags = dict(champion.tags or {})
    if tags.get(TASK_TAG):
        return {"signature": tags[TASK_TAG], "description": tags.get(TASK_TAG + "_description")}
    try:
        import mlflow

        info = mlflow.models.get_model_info(f"models:/{name}/{champion.version}")
        inputs = info.signature.inputs if info.signature else None
        width = int(inputs.inputs[0].shape[-1]) if inputs and inputs.is_tensor_spec() else None
    except Exception:  # an unreadable signature: nothing to compare, score as before
        return None
    classes = json.loads(tags.get(TAG_PREFIX + "class_names", "null") or "null")
    return {"n_features": width, "class_names": classes}


def same_task(task: Mapping[str, Any], champion: Mapping[str, Any] | None) -> bool:
    """Whether a candidate (``task_of``) solves the champion's task (``champion_task``).

    Args:
        task: the candidate's task.
        champion: the champion's task; None when unknown (assumed the same).
    """
    if champion is None:
        return True
    if "signature" in champion:
        return champion["signature"] == task_signature(task)
    if champion.get("n_features") is not None and champion["n_features"] != task["n_features"]:
        return False
    classes = champion.get("class_names")
    return classes is None or list(classes) == list(task["class_names"])


def decide(
    client: Any,
    name: str,
    version: str,
    run_id: str,
    metrics: Mapping[str, Any],
    params: RegisterParams,
    test: tuple[np.ndarray, np.ndarray],
    class_names: list[str] | None,
    on_step: Step | None = None,
    task: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Gate a version and record the decision; on any failure mark the version ``failed``.

    See ``_decide`` for the arguments. A version is never left registered without a record:
    until the gate's tags are complete its ``nnops.decision`` tag says ``pending`` or ``failed``,
    and rerunning the register stage finishes the job.
    """
    if task is not None:
        mark_version(
            client,
            name,
            version,
            {
                TASK_TAG: task_signature(task),
                TASK_TAG + "_description": describe_task(task),
                DECISION_TAG: "pending",
            },
        )
    try:
        record = _decide(
            client, name, version, run_id, metrics, params, test, class_names, on_step, task
        )
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


def _decide(
    client: Any,
    name: str,
    version: str,
    run_id: str,
    metrics: Mapping[str, Any],
    params: RegisterParams,
    test: tuple[np.ndarray, np.ndarray],
    class_names: list[str] | None,
    on_step: Step | None = None,
    task: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Gate a registered version, record the decision in the registry, return the decision record.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the registered model name.
        version: the candidate version (already registered).
        run_id: the MLflow run that produced it.
        metrics: the content of ``reports/metrics.json``.
        params: the ``register`` params section.
        test: raw test features and labels, to score the champion and the candidate alike.
        class_names: names of the output classes, recorded on the version.
        on_step: called after each registry write with a short description.
        task: the candidate's task (``task_of``); a champion trained on another task is not
            compared with, the candidate starts a new lineage.
    """
    try:
        test_accuracy = float(metrics["test"]["accuracy"])
    except (KeyError, TypeError, ValueError):
        raise NnopsError(
            "metrics: no numeric test.accuracy (did the evaluate stage run?)"
        ) from None
    verdict = str((metrics.get("fit") or {}).get("verdict", "unknown"))
    current = alias_version(client, name, CHAMPION)
    previous = str(current.version) if current is not None else None
    already = previous == str(version)
    champion = None
    new_lineage = None
    if previous is not None and not already and task is not None:
        theirs = champion_task(client, name, current)
        if not same_task(task, theirs):
            what = (theirs or {}).get("description") or (
                f"{(theirs or {}).get('n_features')} features, classes "
                f"{(theirs or {}).get('class_names')}"
            )
            new_lineage = (
                f"champion version {previous} was trained on another task ({what}); this "
                f"model takes {describe_task(task)}, so it is not compared with it and starts a "
                f"new lineage under {name!r} (set register.model_name to keep the two apart)"
            )
            log.warning("%s", new_lineage)
    if previous is not None and not already and params.compare_to_champion and not new_lineage:
        x, y = test
        champion = {
            "version": previous,
            "accuracy": score_model(f"models:/{name}@{CHAMPION}", x, y),
            "candidate_accuracy": score_model(f"models:/{name}/{version}", x, y),
        }
    gates = [] if already else gate_checks(test_accuracy, verdict, params, champion)
    promoted = already or all(g.passed for g in gates)
    reason = "already champion" if already else decision_reason(gates, previous is None)
    if new_lineage and not already:
        reason += f" ({new_lineage})"
    if not already:
        tags = promotion_tags(run_id, metrics, gates, reason, promoted, previous, class_names)
        if promoted:
            promote(client, name, version, tags, on_step)
        else:
            record_rejection(client, name, version, tags, params.challenger_alias, on_step)
    alias = CHAMPION if promoted else (CHALLENGER if params.challenger_alias else None)
    return {
        "registered": True,
        "model_name": name,
        "version": str(version),
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version}",
        "promoted": promoted,
        "alias": alias,
        "previous_champion": None if already else previous,
        "reason": reason,
        "gates": [asdict(g) for g in gates],
        "failed_gates": [g.name for g in gates if not g.passed],
        "champion_accuracy": champion["accuracy"] if champion else None,
        "new_lineage": new_lineage,
        "task": dict(task) if task is not None else None,
    }
