"""MLflow for tuning: one parent run per study, one nested child run per trial.

Children carry ``mlflow.parentRunId`` (the MLflow UI nests them), the trial's params under the
same dotted names as pipeline runs, per-epoch metrics at step = epoch, and their outcome as the
tag ``nnops.trial.state`` (complete, pruned, failed). Runs left RUNNING by a dead process are
marked KILLED the next time the study starts. Every write to an embedded sqlite store goes
through ``tracking.store_lock``, like the pipeline's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nnops.tracking import RunInfo, experiment_id, store_lock
from nnops.training_run import EpochLogger

log = logging.getLogger(__name__)

STUDY_TAG = "nnops.tune.study"
STATE_TAG = "nnops.trial.state"
NUMBER_TAG = "nnops.trial.number"


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _params(run_id: str, uri: str, flat: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
    with store_lock(uri):
        for i in range(0, len(items), 100):
            _client(uri).log_batch(run_id, params=items[i : i + 100])


def open_parent(
    uri: str, experiment: str, study: str, run_id: str | None, settings: Mapping[str, Any]
) -> RunInfo:
    """Reopen the study's parent run (``run_id``) or create it with the study settings as params.

    Args:
        uri: the tracking URI.
        experiment: the MLflow experiment.
        study: the study name (the run name and tag).
        run_id: the parent run recorded in the study, if any.
        settings: the ``tune`` section, flat, logged once.
    """
    from mlflow.exceptions import MlflowException

    client, exp_id = _client(uri), experiment_id(uri, experiment)
    if run_id:
        try:
            client.get_run(run_id)
            with store_lock(uri):
                client.update_run(run_id, status="RUNNING")
            return RunInfo(run_id, exp_id, uri)
        except MlflowException:
            log.info("parent run %s is not in %s; starting a new one", run_id, uri)
    tags = {STUDY_TAG: study, "nnops.kind": "tune-study"}
    with store_lock(uri):
        run = client.create_run(exp_id, run_name=f"tune-{study}", tags=tags)
    _params(run.info.run_id, uri, settings)
    return RunInfo(run.info.run_id, exp_id, uri)


class TrialRun:
    """The child run of one trial.

    Args:
        parent: the study's parent run.
        study: the study name.
        number: the Optuna trial number.
    """

    def __init__(self, parent: RunInfo, study: str, number: int):
        self.uri = parent.tracking_uri
        tags = {
            "mlflow.parentRunId": parent.run_id,
            STUDY_TAG: study,
            NUMBER_TAG: str(number),
            STATE_TAG: "running",
        }
        with store_lock(self.uri):
            run = _client(self.uri).create_run(
                parent.experiment_id, run_name=f"trial-{number}", tags=tags
            )
        self.run_id = run.info.run_id
        self.info = RunInfo(self.run_id, parent.experiment_id, self.uri)
        self.epochs = EpochLogger(self.info)

    def log_params(self, flat: Mapping[str, Any]) -> None:
        """Log the trial's params (dotted names, as pipeline runs have them).

        Args:
            flat: param name to value.
        """
        _params(self.run_id, self.uri, flat)

    def end(
        self,
        state: str,
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        status: str | None = None,
    ) -> None:
        """Record the outcome and close the run (pruned runs finish; failed ones fail).

        Args:
            state: complete, pruned or failed.
            metrics: single-valued metrics (objective, epochs run, ...).
            tags: further tags (the error, the epoch where a pruned trial stopped).
            status: the run status, when not the one that goes with ``state`` (KILLED).
        """
        from mlflow.entities import Metric, RunTag

        statuses = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        labels = [RunTag(STATE_TAG, state), *(RunTag(k, str(v)[:5000]) for k, v in tags.items())]
        with store_lock(self.uri):
            client = _client(self.uri)
            client.log_batch(self.run_id, metrics=batch, tags=labels)
            client.set_terminated(self.run_id, status or statuses[state])


def mark_killed(uri: str, run_ids: Iterable[str], reason: str) -> int:
    """Mark trial runs that a dead process left RUNNING as failed and KILLED.

    Args:
        uri: the tracking URI.
        run_ids: the child runs to close.
        reason: the error tag.
    """
    from mlflow.exceptions import MlflowException

    client, count = _client(uri), 0
    for run_id in run_ids:
        try:
            if client.get_run(run_id).info.status != "RUNNING":
                continue
            with store_lock(uri):
                client.set_tag(run_id, STATE_TAG, "failed")
                client.set_tag(run_id, "nnops.trial.error", reason)
                client.set_terminated(run_id, "KILLED")
            count += 1
        except MlflowException:
            continue
    return count


def close_parent(
    parent: RunInfo,
    status: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    files: Iterable[Path],
) -> None:
    """Log the study's summary to the parent run and end it.

    Args:
        parent: the parent run.
        status: FINISHED, FAILED or KILLED.
        metrics: best value and trial counts (logged at step = trials so far).
        tags: the best trial's params as ``best.<key>`` tags (they change as the study goes on).
        files: figures and the best-params file, logged as artifacts under ``tune/``.
    """
    import mlflow
    from mlflow.entities import Metric, RunTag

    uri, run_id = parent.tracking_uri, parent.run_id
    step = int(metrics.get("trials", 0))
    now = int(time.time() * 1000)
    with store_lock(uri):
        client = _client(uri)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
        )
        mlflow.set_tracking_uri(uri)
        for path in files:
            if Path(path).exists():
                client.log_artifact(run_id, str(path), artifact_path="tune")
        client.set_terminated(run_id, status)
