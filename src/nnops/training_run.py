"""The MLflow run of one training execution: start or continue it, log epochs, finish or fail.

The train stage opens the run (continuing the one an interrupted execution left, whose id the
backup remembers), logs each epoch once, and at the end logs the model, its lineage and files
and writes ``models/run.json``; a failure or signal ends the run FAILED or KILLED. mlflow is
imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnops.distribute import Runtime
from nnops.errors import NnopsError
from nnops.io import read_json
from nnops.lineage import datasets, git_state, log_dvc_lock
from nnops.tracking import (
    EMBEDDED_KEY,
    TUNE_ENV,
    RunInfo,
    _first_line,
    _without_userinfo,
    auth_failure,
    close_dead_runs,
    embedded_store_uri,
    experiment_id,
    process_tags,
    store_lock,
    write_run_info,
)

log = logging.getLogger(__name__)


def start_training_run(
    uri: str,
    experiment: str,
    flat_params: dict[str, Any],
    tags: dict[str, str],
    resume_id: str | None = None,
) -> RunInfo:
    """Open the pipeline execution's run: continue ``resume_id`` if it exists, else create one.

    A new run is named after ``$DVC_EXP_NAME`` when DVC runs an experiment (else after the time
    it starts) and gets every param under its dotted name; a continued run keeps its params and
    is marked running again.

    Args:
        uri: the tracking URI (from ``connect``).
        experiment: the experiment name.
        flat_params: params under their dotted names (``Params.flat()``).
        tags: tags to set on the run.
        resume_id: the run an interrupted execution of this stage started, if any.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunStatus
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    exp_id = experiment_id(uri, experiment)
    close_dead_runs(uri, exp_id)
    tags = {**tags, **process_tags()}
    if resume_id:
        try:
            run = client.get_run(resume_id)
        except MlflowException:
            run = None
        if run is not None and run.info.experiment_id == exp_id:
            with store_lock(uri):
                client.update_run(resume_id, status=RunStatus.to_string(RunStatus.RUNNING))
                client.set_tag(resume_id, "nnops.resumed", "true")
                # The interruption is history now: kept as nnops.interrupted_*, so a filter on
                # nnops.end_reason finds only runs that really ended there.
                for key in ("end_reason", "ended_at_epoch"):
                    value = run.data.tags.get(f"nnops.{key}")
                    if value is not None:
                        client.set_tag(resume_id, f"nnops.interrupted_{key}", value)
                        client.delete_tag(resume_id, f"nnops.{key}")
                for key, value in process_tags().items():
                    client.set_tag(resume_id, key, value)
            log.info("continuing MLflow run %s", resume_id)
            return RunInfo(resume_id, exp_id, uri, extra=_store_extra(uri))
        log.info(
            "MLflow run %s of the interrupted execution is gone; starting a new one", resume_id
        )
    # MLflow's random names come from Python's `random`, which training seeds: name runs here.
    name = os.environ.get("DVC_EXP_NAME") or time.strftime("train-%Y%m%d-%H%M%S")
    study = read_json(os.environ[TUNE_ENV]) if os.environ.get(TUNE_ENV) else None
    if study:  # trained from a tuning study: link to its parent run
        tags = {**tags, "nnops.tune.parent_run_id": study["parent_run_id"],
                "nnops.tune.study": study["study"]}  # fmt: skip
    with store_lock(uri):
        run = client.create_run(exp_id, run_name=name, tags=tags)
        params = [Param(k, str(v)) for k, v in sorted(flat_params.items())]
        for i in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[i : i + 100])
    log.info("MLflow run %s (%s) in experiment %r at %s", run.info.run_id, run.info.run_name,
             experiment, uri)  # fmt: skip
    extra = {"run_name": run.info.run_name} | ({"tune": study} if study else {})
    return RunInfo(run.info.run_id, exp_id, uri, extra=extra | _store_extra(uri))


def _store_extra(uri: str) -> dict[str, Any]:
    """Mark a run in the project's embedded store: later stages then follow the project (a copy
    or a move logs into its own mlflow.db), not the absolute path recorded here."""
    return {EMBEDDED_KEY: True} if uri == embedded_store_uri() else {}


class EpochLogger:
    """Log each epoch's metrics once, at step = epoch; safe to call again after a resume.

    Args:
        info: the run to log into.
    """

    def __init__(self, info: RunInfo):
        from mlflow import MlflowClient

        self.info = info
        self.client = MlflowClient(info.tracking_uri)
        history = self.client.get_metric_history(info.run_id, "loss")
        self.logged = {int(m.step) for m in history}

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log ``metrics`` of ``epoch`` unless that epoch is already in the run.

        Args:
            epoch: the 1-based epoch number (the MLflow step).
            metrics: metric name to value.
        """
        from mlflow.entities import Metric

        if epoch in self.logged:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"]
        uri = self.info.tracking_uri
        try:
            with store_lock(uri):
                self.client.log_batch(self.info.run_id, metrics=batch)
        except Exception as exc:  # the server went away or refused: stop with a clear message
            reason = auth_failure(uri, exc) or f"{type(exc).__name__}: {_first_line(exc)}"
            raise NnopsError(
                f"MLflow tracking store at {_without_userinfo(uri)} failed while logging epoch "
                f"{epoch} ({reason}); the finished epochs are kept in the backup: rerun the "
                "stage when the store answers again"
            ) from None
        self.logged.add(epoch)

    def catch_up(self, history: list[dict[str, float]]) -> None:
        """Log epochs of ``history`` the run lacks (e.g. finished just before a kill).

        Args:
            history: per-epoch records with an ``epoch`` key.
        """
        for record in history:
            self(int(record["epoch"]), record)


class _KerasFlavor:
    """``mlflow.keras`` with the model folder created before the input example is written.

    MLflow 3.17's ``mlflow.keras.log_model(..., input_example=...)`` writes the example into a
    folder that does not exist yet (mlflow/mlflow#16183); this is its ``log_model`` with that
    one folder created first. The logged model is a plain ``mlflow.keras`` model.
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> Any:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        return mlflow.keras.save_model(path=path, **kwargs)


def finish_training_run(
    info: RunInfo,
    model: Any,
    example: Any,
    metrics: dict[str, float],
    artifacts: dict[str, list[Path]],
    datasets: list[tuple[str, Any, Any, str, str]],
    pip_requirements: list[str],
    metadata: Mapping[str, Any] | None = None,
) -> RunInfo:
    """Log the model (``mlflow.keras`` flavor), datasets, final metrics and files; end the run.

    Args:
        info: the run from ``start_training_run``.
        model: the trained Keras model (takes raw features).
        example: a few raw input rows: the input example and signature source.
        metrics: single-valued metrics (best epoch, restored-weights metrics, ...).
        artifacts: artifact folder to files to upload there.
        datasets: ``(context, features, targets, source path, digest)`` for ``mlflow.log_input``.
        pip_requirements: requirements recorded with the model (skips slow inference).
        metadata: recorded in the model's MLmodel file: its input ``feature_names`` in order and
            its ``class_names``, so that predict and the register gate read columns by name.
    """
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(info.tracking_uri)

    # A direct call, not model.predict: under MultiWorkerMirroredStrategy predict would wait for
    # the other workers, which have finished.
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    with store_lock(info.tracking_uri), mlflow.start_run(run_id=info.run_id):
        for context, x, y, source, digest in datasets:
            with warnings.catch_warnings():
                # A local path matches MLflow's local artifact source twice; it picks that one.
                warnings.filterwarnings("ignore", message=".*interpreted in multiple ways")
                data = mlflow.data.from_numpy(
                    x, targets=y, source=source, name=context, digest=digest
                )
            mlflow.log_input(data, context=context)
        logged = mlflow.models.Model.log(
            artifact_path=None,
            name="model",
            flavor=_KerasFlavor,
            model=model,
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements,
            metadata=dict(metadata or {}),
        )
        mlflow.log_metrics(metrics)
        log_dvc_lock(info.run_id)
        for folder, paths in artifacts.items():
            for path in paths:
                if Path(path).exists():
                    mlflow.log_artifact(str(path), artifact_path=folder)
    return RunInfo(info.run_id, info.experiment_id, info.tracking_uri, logged.model_uri, info.extra)


def fail_run(
    info: RunInfo, status: str = "FAILED", epoch: int | None = None, reason: str | None = None
) -> None:
    """End the run as FAILED (an error) or KILLED (a signal); it is continued if the stage is
    rerun with its backup.

    Args:
        info: the run to mark.
        status: ``FAILED`` or ``KILLED``.
        epoch: the last epoch logged, recorded as tag ``nnops.ended_at_epoch``.
        reason: why, recorded as tag ``nnops.end_reason``.
    """
    from mlflow import MlflowClient

    try:
        client = MlflowClient(info.tracking_uri)
        with store_lock(info.tracking_uri):
            if epoch is not None:
                client.set_tag(info.run_id, "nnops.ended_at_epoch", str(epoch))
            if reason:
                client.set_tag(info.run_id, "nnops.end_reason", reason)
            client.set_terminated(info.run_id, status)
    except Exception as exc:  # the store is what failed: keep the original error in front
        log.warning("could not mark MLflow run %s %s (%s)", info.run_id, status, _first_line(exc))


def end_interrupted(info: RunInfo, exc: BaseException, epoch: int) -> None:
    """End a training run that did not finish: KILLED for a signal, FAILED for an error.

    Args:
        info: the run.
        exc: what stopped it (``KeyboardInterrupt`` for SIGINT and SIGTERM).
        epoch: the last epoch this process counted as logged (the run's own history wins).
    """
    try:  # what the run holds: a signal may land between logging an epoch and counting it
        from mlflow import MlflowClient

        steps = MlflowClient(info.tracking_uri).get_metric_history(info.run_id, "loss")
        epoch = max([epoch, *(int(m.step) for m in steps)])
    except Exception:  # the store is unreachable: keep the count we have
        pass
    if isinstance(exc, KeyboardInterrupt):
        what = f"stopped by {exc.args[0] if exc.args else 'SIGINT'} at epoch {epoch}"
        status = "KILLED"
    else:
        what, status = f"failed at epoch {epoch}: {type(exc).__name__}", "FAILED"
    fail_run(info, status, epoch, what)  # warns, never raises, when the store is gone too


@dataclass
class TrackedRun:
    """The MLflow run of one pipeline execution, as the train stage drives it.

    ``logger`` logs each finished epoch (an ``EpochSinkFn`` for ``train.fit``).
    """

    info: RunInfo
    logger: EpochLogger

    @classmethod
    def start(
        cls,
        uri: str,
        params: Any,
        meta: Mapping[str, Any],
        runtime: Runtime,
        backup: Path,
        state: Mapping[str, Any],
    ) -> TrackedRun:
        """Continue the run of an interrupted execution (from the backup) or start one.

        Args:
            uri: the tracking URI.
            params: all params (logged under their dotted names).
            meta: ``data/processed/meta.json``.
            runtime: the strategy and devices.
            backup: the backup folder, which remembers the run id.
            state: the backup's state.
        """
        from nnops.backup import remember_run

        tags = run_tags(git_state(Path.cwd()), meta, runtime)
        resume = state.get("run_id")
        info = start_training_run(uri, params.mlflow.experiment, params.flat(), tags, resume)
        remember_run(backup, state, info.run_id)
        return cls(info, EpochLogger(info))

    def finish(
        self,
        model: Any,
        data: Any,
        history: list[dict[str, float]],
        summary: Mapping[str, Any],
        files: dict[str, list[Path]],
        data_dir: str | Path,
        meta: Mapping[str, Any],
        run_json: Path,
    ) -> None:
        """Log what the epochs did not (model, lineage, files, final metrics); write run.json.

        Args:
            model: the trained model.
            data: the ``TrainData``.
            history: the per-epoch records of the whole run.
            summary: the stage summary.
            files: artifact folder to files.
            data_dir: ``data/processed``.
            meta: ``data/processed/meta.json``.
            run_json: where to write the run's identifiers (``models/run.json``).
        """
        import tempfile

        from nnops.lineage import ARTIFACT_DIR, write_digests

        self.logger.catch_up(history)
        with tempfile.TemporaryDirectory(prefix="nnops-lineage-") as tmp:
            seen = write_digests(tmp, data.x_train, data.x_val)
            files = {**files, ARTIFACT_DIR: [*files.get(ARTIFACT_DIR, []), seen]}
            info = finish_training_run(
                self.info,
                model,
                data.x_train[:5],
                run_metrics(summary),
                files,
                datasets(data_dir, data, meta),
                pip_requirements(),
                {
                    "feature_names": list(meta.get("feature_names") or []),
                    "class_names": list(meta.get("class_names") or []),
                },  # fmt: skip
            )
        write_run_info(run_json, info)

    def interrupted(self, exc: BaseException) -> None:
        """End the run KILLED (a signal) or FAILED (an error); a rerun continues it.

        Args:
            exc: what stopped training.
        """
        end_interrupted(self.info, exc, max(self.logger.logged, default=0))


def run_tags(git: Mapping[str, str], meta: Mapping[str, Any], runtime: Runtime) -> dict[str, str]:
    """Tags that tie an MLflow run to its code, data, DVC experiment and hardware.

    Args:
        git: ``commit`` and ``dirty`` from ``nnops.lineage.git_state``.
        meta: ``data/processed/meta.json``.
        runtime: the strategy and devices used.
    """
    import os

    tags = {
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "mlflow.source.git.commit": git["commit"],
        "data.hash": str(meta.get("data_hash", "unknown")),
        "data.source": str(meta.get("source", "unknown")),
        "data.raw_hash": str(meta.get("content_hash", "unknown")),
        "strategy": runtime.kind,
        "replicas": str(runtime.replicas),
        "device": ", ".join(runtime.devices),
        **{f"version.{k}": v for k, v in runtime.versions.items()},
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def run_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Single-valued metrics for MLflow: best epoch and the saved weights' metrics.

    Args:
        summary: the stage summary from ``summary``.
    """
    out = {
        "best_epoch": float(summary["best_epoch"] or 0),
        "epochs_run": float(summary["epochs_run"]),
    }
    out.update({f"restored_{k}": float(v) for k, v in summary["restored"].items()})
    return out


def pip_requirements() -> list[str]:
    """What the logged model needs to load (pinned to the training versions)."""
    import keras
    import numpy as np
    import tensorflow as tf

    return [
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"numpy=={np.__version__}",
    ]
