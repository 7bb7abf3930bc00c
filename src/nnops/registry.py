"""The MLflow Model Registry edge: every function that reads or writes registered versions.

A promotion writes all its tags on the new version first and moves the ``champion`` alias last,
so a version never holds the alias without the record of why; an alias names one version at a
time, so there are never two champions. The gate itself (what to decide) is ``nnops.register``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nnops.errors import NnopsError, few

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "nnops."
TASK_TAG = TAG_PREFIX + "task"
"""Tag on each registered version and its run: a digest of the input schema and label set."""
COLUMNS_TAG = TAG_PREFIX + "task_columns"
"""Like ``TASK_TAG`` but over the set of input columns: reordered columns are the same task."""
DECISION_TAG = TAG_PREFIX + "decision"
"""``pending`` from registration until the gate's record is complete, then ``promoted``,
``rejected`` or ``failed`` (the gate could not finish; rerun register to complete it)."""
MANUAL_TAG = TAG_PREFIX + "promoted_by_hand"
"""Tag on a version ``nnops promote`` made ``@champion``: the user who did."""
TEST_HASH_TAG = TAG_PREFIX + "test_data_hash"
"""Tag on each registered version: the digest of the test split it was scored on."""
TEST_ACCURACY_TAG = TAG_PREFIX + "test_accuracy"
"""Tag on each registered version: its test accuracy on that split (from ``metrics.json``)."""


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
    from nnops.scoring import accuracy

    return accuracy(y, proba)


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
        return {
            "signature": tags[TASK_TAG],
            "columns": tags.get(COLUMNS_TAG),
            "description": tags.get(TASK_TAG + "_description"),
        }
    try:
        import mlflow

        info = mlflow.models.get_model_info(f"models:/{name}/{champion.version}")
        inputs = info.signature.inputs if info.signature else None
        width = int(inputs.inputs[0].shape[-1]) if inputs and inputs.is_tensor_spec() else None
    except Exception:  # an unreadable signature: nothing to compare, score as before
        return None
    classes = json.loads(tags.get(TAG_PREFIX + "class_names", "null") or "null")
    return {"n_features": width, "class_names": classes}


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


def column_signature(task: Mapping[str, Any]) -> str:
    """``task_signature`` over the set of input columns, so that the same columns in another
    order (a rewritten CSV) are the same task.

    Args:
        task: as returned by ``task_of``.
    """
    return task_signature({**task, "feature_names": sorted(task["feature_names"])})


def model_feature_names(uri: str) -> list[str] | None:
    """The input columns a logged model takes, in order, from its MLmodel metadata (the train
    stage records them); None for a model logged without them.

    Args:
        uri: the model's URI (``models:/name/3``, ``runs:/...``).
    """
    import mlflow

    try:
        names = (mlflow.models.get_model_info(uri).metadata or {}).get("feature_names")
    except Exception:  # an unreadable model: the caller's own error says more
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


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


def new_lineage_reason(
    name: str, champion: Any, theirs: Mapping[str, Any], task: Mapping[str, Any]
) -> str:
    """Why a candidate of ``task`` is not compared with ``champion`` (of the task ``theirs``):
    the columns and classes that differ, and whether the champion was promoted by hand.

    Args:
        name: the registered model name.
        champion: the champion's model version.
        theirs: the champion's task (``champion_task``).
        task: the candidate's task (``task_of``).
    """
    tags = dict(champion.tags or {})
    what = theirs.get("description") or (
        f"{theirs.get('n_features')} features, classes {theirs.get('class_names')}"
    )
    differs = []
    # the version's own source URI: a name with quotes or spaces does not parse as models:/...
    columns = model_feature_names(champion.source or f"models:/{name}/{champion.version}")
    if columns is not None:
        only_theirs = [c for c in columns if c not in task["feature_names"]]
        only_mine = [c for c in task["feature_names"] if c not in columns]
        if only_theirs or only_mine:
            differs.append(f"columns only the champion takes: {few(only_theirs, 4) or 'none'}; "
                           f"only this model takes: {few(only_mine, 4) or 'none'}")  # fmt: skip
    classes = json.loads(tags.get(TAG_PREFIX + "class_names") or "null")
    if classes is not None and sorted(map(str, classes)) != sorted(task["class_names"]):
        differs.append(f"classes {few(classes, 4)} -> {few(task['class_names'], 4)}")
    reason = (
        f"champion version {champion.version} was trained on another task ({what}"
        f"{'; ' + '; '.join(differs) if differs else ''}); this model takes {describe_task(task)}, "
        f"so it is not compared with it and starts a new lineage under {name!r} (set "
        "register.model_name to keep the two apart)"
    )
    if tags.get(MANUAL_TAG):
        reason += (f"; note: version {champion.version} is @champion by hand "
                   f"({tags.get(TAG_PREFIX + 'reason')}), and a model that passes the gate "
                   "replaces it")  # fmt: skip
    return reason


def same_task(task: Mapping[str, Any], champion: Mapping[str, Any] | None) -> bool:
    """Whether a candidate (``task_of``) solves the champion's task (``champion_task``).

    Args:
        task: the candidate's task.
        champion: the champion's task; None when unknown (assumed the same).
    """
    if champion is None:
        return True
    if champion.get("columns"):
        return champion["columns"] == column_signature(task)
    if "signature" in champion:
        return champion["signature"] == task_signature(task)
    if champion.get("n_features") is not None and champion["n_features"] != task["n_features"]:
        return False
    classes = champion.get("class_names")
    return classes is None or list(classes) == list(task["class_names"])
