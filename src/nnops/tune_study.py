"""The Optuna study of ``nnops tune``: where it lives, how it samples and prunes, and cleaning
up after processes that died in the middle of a trial.

Trials keep a heartbeat in the study's database; a trial whose process is gone is failed (at
once for a dead process on this machine, after ``tune.stale_after_s`` for other machines) and
its MLflow child run is marked KILLED.
"""

from __future__ import annotations

import logging
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnops.config import Params, TuneParams
from nnops.errors import NnopsError
from nnops.tracking import process_alive

log = logging.getLogger(__name__)

STORE = "optuna.db"


@dataclass(frozen=True)
class Setup:
    """What every worker process needs: params (with command-line overrides), where things are."""

    params: Params
    tune: TuneParams
    storage: str
    tracking_uri: str
    data_dir: str
    parent_run_id: str = ""
    data_hash: str = ""
    """The hash of ``data_dir``'s train and validation data (``tune_data.identity``)."""


def storage_url(tune: TuneParams, root: Path) -> str:
    """``tune.storage``, else ``sqlite:///optuna.db`` at the repository root (beside mlflow.db).

    Args:
        tune: the ``tune`` section.
        root: the repository root.
    """
    return tune.storage or f"sqlite:///{(root / STORE).resolve()}"


def masked(url: str) -> str:
    """The storage URL without its password, for logs, MLflow and files.

    Args:
        url: an SQLAlchemy database URL.
    """
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def direction(metric: str) -> str:
    """``minimize`` for a loss, ``maximize`` for an accuracy.

    Args:
        metric: ``tune.metric``.
    """
    return "minimize" if "loss" in metric else "maximize"


def make_pruner(tune: TuneParams, epochs: int) -> Any:
    """The pruner named by ``tune.pruner.kind``, counting steps in epochs.

    Args:
        tune: the ``tune`` section.
        epochs: ``train.epochs`` (Hyperband's largest budget).
    """
    import optuna

    pr = tune.pruner
    warmup = pr.warmup_epochs + 1  # steps are epochs counted from 1; Optuna's warm-up from 0
    if pr.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pr.startup_trials, n_warmup_steps=warmup
        )
    if pr.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, pr.warmup_epochs),
            max_resource=epochs,
            reduction_factor=pr.reduction_factor,
        )
    if pr.kind == "threshold":
        bound = {"upper" if direction(tune.metric) == "minimize" else "lower": pr.threshold}
        return optuna.pruners.ThresholdPruner(**bound, n_warmup_steps=warmup)
    return optuna.pruners.NopPruner()


STORAGE_TRIES = 5
"""How often opening the study database is tried when a concurrent worker created its tables."""


def open_study(setup: Setup, seed_offset: int = 0) -> Any:
    """Create the study or load it (``load_if_exists``); trials keep a heartbeat.

    Args:
        setup: the run's settings.
        seed_offset: added to ``tune.seed`` so workers and resumed calls sample afresh.
    """
    import optuna

    from nnops.tune_tracking import mark_killed

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # nnops logs each trial's outcome itself
    # Heartbeats and stale-trial checks are marked experimental; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    tune = setup.tune

    def on_stale(study: Any, trial: Any) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        log.info("trial %d lost its heartbeat; marked failed", trial.number)
        if run_id:
            mark_killed(setup.tracking_uri, [run_id], "the trial's process stopped (heartbeat)")

    # Workers that start together on an empty database race to create Optuna's tables; the
    # loser's CREATE TABLE or insert fails (a duplicate table or key). A later try finds them.
    for attempt in range(STORAGE_TRIES):
        try:
            storage = optuna.storages.RDBStorage(
                setup.storage,
                heartbeat_interval=tune.heartbeat_s,
                grace_period=tune.stale_after_s,
                heartbeat_stale_trial_callback=on_stale,
            )
            break
        except Exception as exc:  # no driver, server down, bad URL: name the store, no traceback
            racing = type(exc).__name__ in ("IntegrityError", "ProgrammingError")
            if racing and attempt + 1 < STORAGE_TRIES:
                time.sleep(0.2 * (attempt + 1))
                continue
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise NnopsError(
                f"study storage {masked(setup.storage)} cannot be opened ({type(exc).__name__}: "
                f"{first})"
            ) from None
    sampler = optuna.samplers.TPESampler(
        seed=tune.seed + seed_offset, n_startup_trials=tune.startup_trials
    )
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=make_pruner(tune, setup.params.train.epochs),
        study_name=tune.study,
        direction=direction(tune.metric),
        load_if_exists=True,
    )
    metric = study.user_attrs.get("metric")
    if metric is None:
        study.set_user_attr("metric", tune.metric)
    elif metric != tune.metric:
        raise NnopsError(
            f"study {tune.study!r} in {masked(setup.storage)} optimises {metric}, but tune.metric "
            f"is {tune.metric!r}; pick another --study name or set tune.metric: {metric}"
        )
    return study


def fail_dead_trials(study: Any, tracking_uri: str) -> int:
    """Fail RUNNING trials whose process on this machine is gone; close their MLflow runs.

    Trials of other machines are left to the heartbeat (``tune.stale_after_s``).

    Args:
        study: the study.
        tracking_uri: the MLflow store.
    """
    import optuna

    from nnops.tune_tracking import mark_killed

    host, dead = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        where = str(trial.user_attrs.get("worker", ""))
        name, _, pid = where.rpartition(":")
        if name == host and pid.isdigit() and not process_alive(int(pid)):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            dead.append(trial)
    optuna.storages.fail_stale_trials(study)
    runs = [t.user_attrs["mlflow_run_id"] for t in dead if "mlflow_run_id" in t.user_attrs]
    mark_killed(tracking_uri, runs, "the trial's process was killed")
    return len(dead)


def close_orphan_runs(study: Any, parent_run_id: str, tracking_uri: str) -> int:
    """Mark KILLED the child runs still RUNNING whose trial is no longer running.

    Args:
        study: the study.
        parent_run_id: the study's parent run.
        tracking_uri: the MLflow store.
    """
    import optuna

    from nnops.tune_tracking import mark_killed

    client_runs = _children(tracking_uri, parent_run_id, "attributes.status = 'RUNNING'")
    running = {
        t.user_attrs.get("mlflow_run_id")
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    }
    stale = [r.info.run_id for r in client_runs if r.info.run_id not in running]
    return mark_killed(tracking_uri, stale, "the trial's process was killed")


def _children(uri: str, parent_run_id: str, extra: str = "") -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and {extra}" if extra else "")
    return list(client.search_runs([exp], query, max_results=5000))


@contextmanager
def study_lock(storage: str, study: str, wait_s: float = 60.0) -> Iterator[None]:
    """Hold a lock on ``study`` shared by every process that reaches its database.

    The lock is a study named ``<study>.lock``: creating a study name is atomic in the
    database, so exactly one process holds it. Workers that start at the same moment take it in
    turn to find or open the study's one MLflow parent run. A lock older than ``wait_s`` (its
    holder died) is taken over.

    Args:
        storage: the study database URL.
        study: the study name.
        wait_s: how long to wait for another process's lock.
    """
    import optuna

    name = f"{study}.lock"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            optuna.create_study(storage=storage, study_name=name)
            break
        except optuna.exceptions.DuplicatedStudyError:
            if time.monotonic() > deadline:
                log.info("lock %r in %s is older than %.0f s; taking it over", name,
                         masked(storage), wait_s)  # fmt: skip
                with suppress(KeyError):
                    optuna.delete_study(study_name=name, storage=storage)
                deadline = time.monotonic() + wait_s
            time.sleep(0.5)
    try:
        yield
    finally:
        with suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
