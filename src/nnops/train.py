"""Training: ``fit`` builds, compiles and trains the model; the train stage's run around it.

``fit`` (what the train stage, tuning trials, the learning curve and the benchmarks call) builds
the network from params, sets up the callbacks (epoch order, the one epoch history, early
stopping, the backup, epoch sinks) and hands them to one of the loops in ``nnops.loops``:
``in_graph`` (default), ``tf_data`` or ``numpy`` on one device, the custom loop for ``mirrored``
and ``multi_worker``. ``train_stage`` is the train stage: read data/processed, keep or clear the
backup, fit inside the MLflow run, and write the model, history and summary.

The batch order of epoch ``e`` is a pure function of ``(train.seed, e)``, and the backup holds
the weights, the optimizer state and the epoch history, so a killed run resumed from its last
completed epoch ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nnops import catalog
from nnops.callbacks import (
    HISTORY_KEYS,
    Backup,
    EpochHistory,
    EpochOrder,
    EpochSink,
    EpochSinkFn,
    non_finite_losses,
)
from nnops.config import Params, TrainParams
from nnops.distribute import Runtime
from nnops.loops import distributed_loop, in_graph_loop, keras_fit_loop, use_xla
from nnops.model import build_model, compile_model, steps_per_epoch
from nnops.train_data import TrainData

log = logging.getLogger(__name__)

__all__ = ["TrainData", "TrainResult", "best_epoch", "fit", "train_stage"]

SCORE_ROWS = 4096  # rows per forward pass when scoring the saved weights (fixes the sums)


@dataclass
class TrainResult:
    """What a fit produced besides the model; epochs are numbered from 1."""

    history: list[dict[str, float]]
    start_epoch: int
    stopped_early: bool
    steps_per_execution: int
    best_epoch: int | None = None


def effective_steps_per_execution(
    params: TrainParams, runtime: Runtime, steps: int, xla: bool = False
) -> int:
    """Return how many batches run per call into TensorFlow, logging when it differs from params.

    ``model.fit`` and the in-graph loop take ``train.steps_per_execution`` (``model.fit`` fails
    with it above one on more than one replica, which is why the distributed modes use the custom
    loop). The custom loop, and the in-graph loop under XLA, run a whole epoch per call.

    Args:
        params: the ``train`` params section.
        runtime: the strategy in use.
        steps: optimizer steps per epoch.
        xla: whether the in-graph loop is compiled with XLA (``loops.use_xla``).
    """
    if runtime.kind == "none" and not (xla and params.input_pipeline == "in_graph"):
        return params.steps_per_execution
    what = (
        f"train.distribute={runtime.kind}: the training loop"
        if runtime.kind != "none"
        else "the XLA-compiled in-graph loop"
    )
    log.info(
        "%s runs all %d steps of an epoch in one call "
        "(train.steps_per_execution=%d applies to the other loops)",
        what,
        steps,
        params.steps_per_execution,
    )
    return steps


def best_epoch(history: Sequence[Mapping[str, float]], monitor: str) -> int | None:
    """Return the 1-based epoch with the best ``monitor`` value (lowest loss, highest accuracy).

    Args:
        history: per-epoch records with an ``epoch`` key.
        monitor: the metric to rank by.
    """
    sign = 1.0 if "loss" in monitor else -1.0
    ranked = [(sign * r[monitor], r["epoch"]) for r in history if monitor in r]
    return int(min(ranked)[1]) if ranked else None  # ties: the earliest epoch


def fit(
    data: TrainData,
    params: TrainParams,
    runtime: Runtime,
    backup_dir: str | Path | None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    on_epoch: Sequence[EpochSinkFn] = (),
    jit_compile: bool | str = "auto",
) -> tuple[keras.Model, TrainResult]:
    """Build, compile and train the model; resume from ``backup_dir`` when it holds a backup.

    Args:
        data: raw training and validation arrays with the preprocessing description.
        params: the ``train`` params section.
        runtime: devices and strategy from ``nnops.distribute.configure_runtime``.
        backup_dir: where to back up each epoch (``None``: no backup, no resume).
        callbacks: extra Keras callbacks, called after the built-in ones each epoch.
        on_epoch: called after those with each finished epoch's number and record.
        jit_compile: XLA compilation on one device: ``Model.fit``'s setting, and for the
            in-graph loop ``True``, ``False`` or ``"auto"`` (``loops.use_xla``).
    """
    n_features = int(data.x_train.shape[1])
    steps = steps_per_epoch(len(data.x_train), params.batch_size)
    xla = use_xla(jit_compile, params.epochs * steps)
    spe = effective_steps_per_execution(params, runtime, steps, xla)
    # Model.fit's XLA setting; the in-graph loop decides for itself (loops.use_xla).
    keras_jit = "auto" if params.input_pipeline == "in_graph" else jit_compile
    keras_jit = keras_jit if runtime.kind == "none" else False
    with runtime.strategy.scope():
        model = build_model(
            params, n_features, data.n_classes, data.preprocessing, params.mixed_precision
        )
        compile_model(
            model,
            params,
            steps,
            steps_per_execution=spe if runtime.kind == "none" else 1,
            jit_compile=keras_jit,
            mixed_precision=params.mixed_precision,
        )
        # Optimizer slots created inside a replicated loop break it: create them up front.
        model.optimizer.build(model.trainable_variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    history = EpochHistory()
    own: list[keras.callbacks.Callback] = [EpochOrder(epoch, steps), history]
    early = None
    es = params.early_stopping
    # Without validation data, early stopping and the best epoch follow the training metric.
    monitor = es.monitor if data.x_val is not None else es.monitor.removeprefix("val_")
    if es.enabled:
        early = keras.callbacks.EarlyStopping(
            monitor=monitor,
            patience=es.patience,
            min_delta=es.min_delta,
            restore_best_weights=es.restore_best_weights,
            mode="min" if "loss" in monitor else "max",
        )
        own.append(early)
    if backup_dir is not None:
        own.append(Backup(backup_dir, steps, history, early))
    all_callbacks = [*own, *callbacks, EpochSink(history, on_epoch)]
    if runtime.kind == "none" and params.input_pipeline == "in_graph":
        in_graph_loop(model, data, params, spe, all_callbacks, xla)
    elif runtime.kind == "none":
        keras_fit_loop(model, data, params, epoch, all_callbacks)
    else:
        distributed_loop(model, data, params, runtime, steps, epoch, all_callbacks)
    result = TrainResult(
        history=history.records,
        start_epoch=history.first_epoch,
        stopped_early=bool(early is not None and early.stopped_epoch > 0),
        steps_per_execution=spe,
        best_epoch=best_epoch(history.records, monitor),
    )
    return model, result


def saved_metrics(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Return loss and accuracy of ``model`` as it is saved, the way Keras reports them.

    The probabilities come from ``scoring.predict_proba``. The loss is Keras' training loss (the
    mean negative log-likelihood of probabilities clipped at 1e-7, plus any weight penalty), so
    it is comparable with the history; ``scoring.score_split``'s log loss (renormalised, without
    the penalty) answers a different question and would change these numbers.

    Args:
        model: the trained model, with the weights it will be saved with.
        x: raw features.
        y: class indices.
    """
    from nnops.scoring import predict_proba

    probs = predict_proba(model, x, chunk_rows=SCORE_ROWS).astype("float64")
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))
    penalty = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)
    return {"loss": float(nll.mean()) + penalty, "accuracy": float((probs.argmax(1) == y).mean())}


def summary(
    result: TrainResult, runtime: Runtime, params: TrainParams, model: keras.Model, data: TrainData
) -> dict[str, Any]:
    """The train stage's ``reports/train/summary.json``; epochs are counted from 1.

    Args:
        result: what ``fit`` returned.
        runtime: the strategy and devices used.
        params: the ``train`` params section.
        model: the trained model, with the weights it is saved with.
        data: the training data.
    """
    es = params.early_stopping
    restored = saved_metrics(model, data.x_train, data.y_train)
    if data.x_val is not None:
        restored.update(
            {f"val_{k}": v for k, v in saved_metrics(model, data.x_val, data.y_val).items()}
        )
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "epochs_planned": params.epochs,
        "resumed_from_epoch": result.start_epoch or None,
        "early_stopped": result.stopped_early,
        "restored_best_weights": bool(es.enabled and es.restore_best_weights),
        "restored": restored,
        "seed": params.seed,
        "deterministic": params.deterministic,
        "steps_per_execution": result.steps_per_execution,
        "input_pipeline": params.input_pipeline,
        "mixed_precision": params.mixed_precision,
        "parameters": int(model.count_params()),
        **runtime.describe(),
    }


def describe(result: TrainResult, summary: Mapping[str, Any]) -> str:
    """One line about what this execution trained.

    Args:
        result: what ``fit`` returned.
        summary: the stage summary.
    """
    done = len(result.history)
    ran = f"epochs {result.start_epoch + 1}-{done}" if done > result.start_epoch else "no epochs"
    resumed = f" (resumed after epoch {result.start_epoch})" if result.start_epoch else ""
    val = summary["restored"].get("val_accuracy")
    return f"{ran}{resumed}, {done} in all" + (
        f", val accuracy {val:.4f}" if val is not None else ""
    )


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save in Keras format atomically: a failure keeps any earlier model file.

    Args:
        model: the model.
        path: the ``.keras`` destination.
    """
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(tmp)
        same_bytes_for_same_weights(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def same_bytes_for_same_weights(path: Path) -> None:
    """Rewrite a ``.keras`` file without the two things that change on every save: the time in
    ``metadata.json`` (``date_saved``) and the weights entry's zip timestamp. Same weights then
    give the same file, so DVC sees no change after an identical retrain and the md5 of a model
    identifies its weights. Keras reads neither.

    Args:
        path: the saved ``.keras`` file, rewritten in place.
    """
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            info.date_time = (1980, 1, 1, 0, 0, 0)
            archive.writestr(info, data)


def write_history_csv(path: str | Path, history: Sequence[Mapping[str, float]]) -> None:
    """Write the per-epoch history as the DVC plots file.

    Args:
        path: ``reports/train/history.csv``.
        history: per-epoch records.
    """
    import csv

    from nnops.io import atomic_path

    fields = ["epoch", *[k for k in HISTORY_KEYS if any(k in r for r in history)]]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for record in history:
            writer.writerow({k: record.get(k, "") for k in fields})


def log_epoch(epoch: int, record: Mapping[str, float]) -> None:
    """Log one line per finished epoch (the stage passes it to ``fit`` as an epoch sink).

    The backup already holds the epoch when this line appears.

    Args:
        epoch: the 1-based epoch.
        record: its metrics.
    """
    shown = ", ".join(f"{k} {record[k]:.4g}" for k in HISTORY_KEYS if k in record)
    log.info("epoch %d done: %s", epoch, shown)


def refuse_divergence(p: TrainParams) -> EpochSinkFn:
    """An epoch sink that stops training at the first epoch whose loss is not finite: a model of
    NaN weights is no result (evaluate could not score it), and every later epoch stays NaN.

    Args:
        p: the ``train`` params, for the message.
    """
    from nnops.errors import NnopsError

    def check(epoch: int, record: Mapping[str, float]) -> None:
        if bad := non_finite_losses(record):
            raise NnopsError(
                f"training diverged: {bad[0]} is {record[bad[0]]} at epoch {epoch}; lower "
                f"train.learning_rate (now {p.learning_rate:g}) or train.l2 (now {p.l2:g}) and "
                "rerun (the MLflow run is marked FAILED)"
            )

    return check


def train_stage(
    params: Params,
    uri: str | None,
    data_dir: str | Path = catalog.PROCESSED_DIR,
    models_dir: str | Path = catalog.MODELS_DIR,
    reports_dir: str | Path = catalog.TRAIN_REPORTS,
) -> TrainResult:
    """The train stage: fit on data/processed resumably inside the MLflow run; write the outputs.

    Writes ``model.keras`` and ``run.json`` under ``models_dir``, ``history.csv`` and
    ``summary.json`` under ``reports_dir``, and empties the backup after success. A failure or
    signal ends the run FAILED or KILLED and leaves the backup for the rerun to resume from.

    Args:
        params: all params.
        uri: the tracking URI from ``tracking.connect`` (``None``: a worker that does not track).
        data_dir: the preprocess stage's output.
        models_dir: where the model, run.json and the backup go.
        reports_dir: where the history and summary go.
    """
    from nnops import distribute
    from nnops.backup import clear_backup, prepare_backup
    from nnops.io import require_writable, write_json
    from nnops.train_data import check_preprocessing, load_processed
    from nnops.training_run import TrackedRun

    p, models, reports = params.train, Path(models_dir), Path(reports_dir)
    require_writable([models, models / catalog.BACKUP_DIR.name, reports],
                     "the model, its resumable backup and the training reports")  # fmt: skip
    data, meta, x_pre = load_processed(data_dir)
    runtime = distribute.configure_runtime(p)  # before any other TensorFlow op
    spec_file = Path(data_dir) / catalog.PREPROCESSING_JSON
    check_preprocessing(data.preprocessing, data.x_train, x_pre, spec_file)
    backup, state = prepare_backup(
        models / catalog.BACKUP_DIR.name, p, meta, int(data.x_train.shape[1])
    )
    run = TrackedRun.start(uri, params, meta, runtime, backup, state) if uri else None
    try:
        sinks = [log_epoch, refuse_divergence(p)]
        sinks = [run.logger, *sinks] if run else sinks
        model, result = fit(data, p, runtime, backup, on_epoch=sinks)
        stats = summary(result, runtime, p, model, data)
        save_model(model, models / catalog.MODEL.name)
        write_history_csv(reports / catalog.HISTORY_CSV.name, result.history)
        write_json(reports / catalog.TRAIN_SUMMARY.name, stats)
        if run:
            # validate's report is logged by the report stage: train does not depend on it,
            # so a validate-only param change does not retrain
            files = {
                "train": [reports / catalog.HISTORY_CSV.name, reports / catalog.TRAIN_SUMMARY.name],
            }
            run_json = models / catalog.RUN_INFO.name
            run.finish(model, data, result.history, stats, files, data_dir, meta, run_json)
    except BaseException as exc:  # a signal ends the run KILLED, an error FAILED
        if run:
            run.interrupted(exc)
        raise
    clear_backup(backup)
    log.info("%s; best epoch %s -> %s", describe(result, stats), result.best_epoch, models)
    return result
