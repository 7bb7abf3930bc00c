"""One tuning trial: sample the space, train through ``train.fit``, score on validation.

The objective runs inside an Optuna worker process that has loaded ``data/processed`` (train and
validation splits only) and set up TensorFlow once. A Keras callback stops a fit whose loss is
not finite and reports the metric to the pruner each epoch; every trial gets a child run.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from nnops.config import ConfigError, TrainParams
from nnops.errors import NnopsError
from nnops.tune_data import TRIAL_HASH_ATTR, identity
from nnops.tune_study import Setup, open_study

log = logging.getLogger(__name__)


def fold_data(data: Any, k: int, seed: int) -> list[Any]:
    """Stratified k folds over train+val: each fold trains on k-1 parts, validates on one.

    Args:
        data: the ``TrainData`` of data/processed (train and validation splits).
        k: ``tune.cv_folds``.
        seed: the shuffle seed (``split.seed``).
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    x = np.concatenate([data.x_train, data.x_val]) if data.x_val is not None else data.x_train
    y = np.concatenate([data.y_train, data.y_val]) if data.y_val is not None else data.y_train
    try:
        folds = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y))
    except ValueError as exc:
        raise NnopsError(f"tune.cv_folds={k}: {exc}") from None
    return [replace(data, x_train=x[a], y_train=y[a], x_val=x[b], y_val=y[b]) for a, b in folds]


def trial_value(history: Sequence[Mapping[str, float]], p: TrainParams, metric: str) -> float:
    """The metric of the weights the pipeline would keep: the best epoch's when early stopping
    restores it, else the last epoch's.

    Args:
        history: per-epoch records from ``train.fit``.
        p: the trial's ``train`` section.
        metric: ``tune.metric``.
    """
    from nnops.train import best_epoch

    es = p.early_stopping
    epoch = best_epoch(history, es.monitor) if es.enabled and es.restore_best_weights else None
    record = history[(epoch or len(history)) - 1]
    return float(record[metric])


def _epoch_callback(trial: Any, metric: str, report: bool) -> Any:
    """A Keras callback: NaN losses stop the fit; the metric goes to the pruner each epoch."""
    import keras

    from nnops.callbacks import non_finite_losses

    class PruneOnEpoch(keras.callbacks.Callback):
        nan_epoch: int | None = None
        pruned_epoch: int | None = None

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            logs = logs or {}
            if non_finite_losses(logs):
                self.nan_epoch, self.model.stop_training = epoch + 1, True
                return
            if report and metric in logs:
                trial.report(float(logs[metric]), step=epoch + 1)
                if trial.should_prune():
                    self.pruned_epoch, self.model.stop_training = epoch + 1, True

    return PruneOnEpoch()


def run_trial(trial: Any, setup: Setup, data: Any, runtime: Any, parent: Any) -> float:
    """The objective: sample, train through ``train.fit``, track in a child run, score.

    Args:
        trial: the Optuna trial.
        setup: the run's settings.
        data: ``TrainData`` (train and validation splits only).
        runtime: the process's devices and strategy.
        parent: the study's parent run (``RunInfo``).
    """
    import statistics

    import keras
    import optuna

    from nnops import train, tune_space
    from nnops.tune_tracking import TrialRun

    tune, base = setup.tune, setup.params
    run = TrialRun(parent, tune.study, trial.number)
    trial.set_user_attr("mlflow_run_id", run.run_id)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr(TRIAL_HASH_ATTR, setup.data_hash)  # what data this score is on
    values: dict[str, Any] = {}
    epochs, tags, metrics = 0, {}, {}
    try:
        for dim in tune.space:
            if dim.type == "float":
                values[dim.key] = trial.suggest_float(dim.key, dim.low, dim.high, log=dim.log)
            elif dim.type == "int":
                values[dim.key] = trial.suggest_int(dim.key, dim.low, dim.high, log=dim.log)
            else:
                values[dim.key] = trial.suggest_categorical(dim.key, list(dim.choices))
        p = tune_space.apply(base.train, values)
        flat = base.model_copy(update={"train": p, "tune": None}).flat()
        run.log_params({k: v for k, v in flat.items() if not k.startswith("tune")})
        folds = fold_data(data, tune.cv_folds, base.split.seed) if tune.cv_folds else [data]
        scores = []
        for i, fold in enumerate(folds):
            keras.backend.clear_session()
            if p.deterministic:
                keras.utils.set_random_seed(p.seed)
            watch = _epoch_callback(trial, tune.metric, report=i == 0)
            sinks = [run.epochs] if i == 0 else []
            _, result = train.fit(fold, p, runtime, None, [watch], on_epoch=sinks)
            epochs += len(result.history)
            if watch.nan_epoch:
                raise NnopsError(f"loss is not finite at epoch {watch.nan_epoch} (fold {i + 1})")
            if watch.pruned_epoch:
                tags["nnops.trial.stopped_epoch"] = str(watch.pruned_epoch)
                metrics["stopped_epoch"] = watch.pruned_epoch
                raise optuna.TrialPruned(f"pruned at epoch {watch.pruned_epoch}")
            scores.append(trial_value(result.history, p, tune.metric))
            metrics[f"fold_{i + 1}_{tune.metric}"] = scores[-1]
        value = statistics.fmean(scores)
        if tune.cv_folds:
            metrics |= {"cv_mean": value, "cv_std": statistics.pstdev(scores)}
            trial.set_user_attr("cv_std", statistics.pstdev(scores))
        run.end("complete", {**metrics, "objective": value, "epochs_run": epochs}, tags)
        log.info("trial %d: %s %.4f after %d epoch(s)", trial.number, tune.metric, value, epochs)
        return value
    except optuna.TrialPruned:
        run.end("pruned", {**metrics, "epochs_run": epochs}, tags)
        log.info("trial %d: pruned after epoch %d", trial.number, epochs)
        raise
    except KeyboardInterrupt:
        run.end("failed", {"epochs_run": epochs}, {"nnops.trial.error": "interrupted"}, "KILLED")
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", error)
        run.end("failed", {"epochs_run": epochs}, {**tags, "nnops.trial.error": error})
        raise
    finally:
        trial.set_user_attr("epochs", epochs)


def work(setup: Setup, n_trials: int, worker: int, seed_offset: int) -> None:
    """One worker: load the data, set up TensorFlow once, run ``n_trials`` trials of the study.

    Args:
        setup: the run's settings.
        n_trials: trials for this worker.
        worker: the worker index (0 in a single-process run).
        seed_offset: from the study's size when this call started.
    """
    from nnops import distribute
    from nnops.stage import configure_logging, quiet_environment
    from nnops.tracking import RunInfo

    if worker:
        quiet_environment()
        configure_logging()
    distribute.import_tensorflow()
    from nnops.train_data import check_preprocessing, load_processed

    data, meta, x_pre = load_processed(setup.data_dir)
    if data.x_val is None and not setup.tune.cv_folds:
        raise NnopsError(f"{setup.data_dir}/val.npz is empty: trials need a validation split")
    val = None if data.x_val is None else (data.x_val, data.y_val)
    found = identity((data.x_train, data.y_train), val, data.preprocessing, meta)
    if found["hash"] != setup.data_hash:  # rewritten since the study's data was checked
        raise NnopsError(
            f"{setup.data_dir} changed since this nnops tune started (a preprocess run?); run "
            "nnops tune again"
        )
    check_preprocessing(data.preprocessing, data.x_train, x_pre, setup.data_dir)
    runtime = distribute.configure_runtime(setup.params.train)
    study = open_study(setup, seed_offset + 1000 * worker)
    parent = RunInfo(setup.parent_run_id, "", setup.tracking_uri)
    from mlflow import MlflowClient

    parent = replace(
        parent,
        experiment_id=MlflowClient(setup.tracking_uri).get_run(parent.run_id).info.experiment_id,
    )
    study.optimize(
        lambda trial: run_trial(trial, setup, data, runtime, parent),
        n_trials=n_trials,
        timeout=setup.tune.timeout_s,
        catch=(Exception,),
    )


def _work_process(setup: Setup, n_trials: int, worker: int, seed_offset: int) -> None:
    """A ``--jobs`` worker process: bad input ends it with one line and status 2."""
    try:
        work(setup, n_trials, worker, seed_offset)
    except (NnopsError, ConfigError) as exc:
        print(f"nnops tune: worker {worker}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
