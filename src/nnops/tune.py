"""``nnops tune``: an Optuna study over ``train.*``, every trial in MLflow, the winner to DVC.

Each trial samples the space in ``tune.space`` (TPE, seeded), builds its ``train`` section with
``tune_space.apply`` and trains through the pipeline's own ``train.fit`` on the train split of
``data/processed``, scored on the validation split (``load_processed`` never opens the test
split). A Keras callback reports the metric every epoch so the pruner can stop weak trials. The
study lives in an RDB (``optuna.db`` beside ``mlflow.db`` unless ``tune.storage`` names one), so a
killed study resumes and several processes or machines share it. A study tunes one dataset:
it records the processed data's identity and refuses to go on on other data (``tune_data``),
so no trial is ever compared with trials scored on other rows. The run ends by writing
``reports/tune/best_params.json`` and the ``dvc exp run -S ...`` command that trains the winner
through the pipeline (``--apply`` runs it; its MLflow run is tagged with the study).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nnops.config import ConfigError, TuneParams, load_params
from nnops.errors import NnopsError
from nnops.tune_study import (
    Setup,
    close_orphan_runs,
    direction,
    fail_dead_trials,
    masked,
    open_study,
    storage_url,
    study_lock,
)

log = logging.getLogger(__name__)

BEST_FILE = "best_params.json"
PARENT_ATTR = "mlflow_parent_run_id"


# --- The study as a whole ---------------------------------------------------------------------


def split_trials(total: int, jobs: int) -> list[int]:
    """Share ``total`` trials among ``jobs`` workers (the first ones take the remainder).

    Args:
        total: trials to run.
        jobs: worker processes.
    """
    jobs = max(1, min(jobs, total))
    return [total // jobs + (1 if i < total % jobs else 0) for i in range(jobs)]


def optimise(setup: Setup, trials: int, seed_offset: int) -> None:
    """Run the trials, in this process (one job) or in ``tune.jobs`` worker processes.

    Args:
        setup: the run's settings (the parent run already open).
        trials: trials to run in all.
        seed_offset: the study's size when this call started.
    """
    from nnops.tune_trial import _work_process, work

    shares = split_trials(trials, setup.tune.jobs)
    if len(shares) == 1:
        work(setup, shares[0], 0, seed_offset)
        return
    import multiprocessing

    # Workers share a GPU: each takes memory as it needs it instead of all of it up front.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_work_process, args=(setup, n, i, seed_offset), name=f"tune-worker-{i}")
        for i, n in enumerate(shares)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
    bad = [p.name for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise NnopsError(f"worker process(es) {', '.join(bad)} failed; see their messages above")


def figures(study: Any, out: Path) -> list[Path]:
    """Optimization history and param importances as PNGs (Optuna's matplotlib plots).

    Args:
        study: the study.
        out: the folder to write into.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    plots = {"optimization_history.png": vis.plot_optimization_history}
    if len(complete) >= 2:
        plots["param_importances.png"] = vis.plot_param_importances
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plots are marked experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. no param varied between trials
                log.info("no %s: %s", name, exc)
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(out / name)
    return written


def summarize(study: Any, setup: Setup, out: Path) -> dict[str, Any]:
    """The study's outcome: counts, best trial, its ``train`` section and the DVC command.

    Args:
        study: the study.
        setup: the run's settings.
        out: ``reports/tune``.
    """
    from nnops import tune_space
    from nnops.tune_data import DATA_ATTR, TRIAL_HASH_ATTR

    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for t in study.trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": masked(setup.storage),
        "parent_run_id": setup.parent_run_id,
        "tracking_uri": setup.tracking_uri,
        "metric": setup.tune.metric,
        "direction": direction(setup.tune.metric),
        "trials": {k.lower(): v for k, v in counts.items()},
        "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in study.trials),
    }
    if not counts["COMPLETE"]:
        return summary
    best = study.best_trial
    tuned = tune_space.apply(setup.params.train, best.params)
    sets = tune_space.overrides(setup.params.train, tuned)
    summary |= {
        "best_trial": best.number,
        "best_value": best.value,
        "best_mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
        "data_hash": best.user_attrs.get(TRIAL_HASH_ATTR),
        "data": study.user_attrs.get(DATA_ATTR),
        "params": best.params,
        "train": tuned.model_dump(mode="json"),
        "overrides": sets,
        "command": " ".join(["dvc exp run", *(f"-S {shlex.quote(s)}" for s in sets)]),
    }
    if "cv_std" in best.user_attrs:
        summary["cv"] = {"mean": best.value, "std": best.user_attrs["cv_std"]}
    summary["figures"] = [str(p.resolve()) for p in figures(study, out)]
    return summary


def begin(setup: Setup) -> tuple[Setup, int]:
    """Check the study tunes this data, clean up after dead processes and open the parent run.

    Returns the settings with the parent run and the number of trials already in the study.

    Args:
        setup: the run's settings.
    """
    from nnops.tune_data import check_study, read_identity
    from nnops.tune_tracking import open_parent

    data = read_identity(setup.data_dir)
    setup = replace(setup, data_hash=data["hash"])
    study = open_study(setup)
    # Before anything else is touched: trials on other data are never mixed into the study.
    with study_lock(setup.storage, setup.tune.study):
        check_study(study, setup.tune.study, masked(setup.storage), data, setup.data_dir)
    killed = fail_dead_trials(study, setup.tracking_uri)
    if killed:
        log.info("marked %d trial(s) of killed processes failed", killed)
    # The study's settings as parent-run params: tune.* by dotted name, one per dimension.
    flat = _flat_tune(setup.tune.model_dump(mode="json", exclude={"space"}))
    flat["tune.storage"] = masked(setup.storage)
    flat |= {f"tune.space.{i}": d.model_dump(mode="json") for i, d in enumerate(setup.tune.space)}
    # Under the lock, so that workers starting together on one store share one parent run.
    with study_lock(setup.storage, setup.tune.study):
        known = study.user_attrs.get(PARENT_ATTR)
        same_store = study.user_attrs.get("tracking_uri") == setup.tracking_uri
        known = known if same_store else None
        parent = open_parent(
            setup.tracking_uri, setup.params.mlflow.experiment, setup.tune.study, known, flat
        )
        study.set_user_attr(PARENT_ATTR, parent.run_id)
        study.set_user_attr("tracking_uri", setup.tracking_uri)
    setup = replace(setup, parent_run_id=parent.run_id)
    orphans = close_orphan_runs(study, parent.run_id, setup.tracking_uri)
    if orphans:
        log.info("marked %d MLflow trial run(s) of killed processes KILLED", orphans)
    log.info(
        "study %r in %s: %d trial(s) so far; MLflow parent run %s",
        setup.tune.study, masked(setup.storage), len(study.trials), parent.run_id,
    )  # fmt: skip
    return setup, len(study.trials)


def _flat_tune(section: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, Mapping):
            out |= {f"tune.{key}.{k}": v for k, v in value.items()}
        else:
            out[f"tune.{key}"] = value
    return out


def finish(setup: Setup, out: Path, status: str) -> dict[str, Any]:
    """Summarise, write ``best_params.json`` and figures, close the parent run.

    Args:
        setup: the run's settings.
        out: ``reports/tune``.
        status: the parent run's final status.
    """
    from nnops.io import write_json
    from nnops.tune_tracking import close_parent

    study = open_study(setup)
    summary = summarize(study, setup, out)
    best_file = out / BEST_FILE
    if "best_value" in summary:
        write_json(best_file, summary)
    trials = summary["trials"]
    metrics = {
        "trials": float(sum(trials.values())),
        "trials_complete": trials["complete"],
        "trials_pruned": trials["pruned"],
        "trials_failed": trials["fail"],
        "epochs_total": summary["epochs"],
    }
    tags = {}
    if "best_value" in summary:
        metrics["best_value"] = summary["best_value"]
        # MLflow names take no "*": best.train.hidden_layers.all.units
        tags = {f"best.{k.replace('*', 'all')}": v for k, v in summary["params"].items()}
        tags |= {"best.trial": summary["best_trial"], "best.command": summary["command"]}
    files = [Path(p) for p in summary.get("figures", [])]
    close_parent(_parent(setup), status, metrics, tags, [*files, best_file])
    return summary


def _parent(setup: Setup) -> Any:
    from mlflow import MlflowClient

    from nnops.tracking import RunInfo

    run = MlflowClient(setup.tracking_uri).get_run(setup.parent_run_id)
    return RunInfo(setup.parent_run_id, run.info.experiment_id, setup.tracking_uri)


def apply_best(best_file: Path, overrides: Sequence[str]) -> int:
    """Run ``dvc exp run -S ...`` with the winner; its train stage tags the run with the study.

    Args:
        best_file: ``reports/tune/best_params.json`` (named to the stage by an env variable).
        overrides: ``key=value`` overrides.
    """
    import shutil
    import subprocess

    from nnops.tracking import TUNE_ENV

    dvc = shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [dvc or "dvc", "exp", "run", *(a for s in overrides for a in ("-S", s))]
    env = {**os.environ, TUNE_ENV: str(best_file.resolve())}
    return subprocess.run(cmd, env=env, check=False).returncode


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Search train.* with Optuna (TPE sampler, pruning); every trial is a nested "
        "MLflow run; the best params go through `dvc exp run` (see docs/tuning.md).",
    )
    p.add_argument("--trials", type=int, help="trials to run now (default: tune.trials)")
    p.add_argument("--timeout", type=float, help="seconds to run at most (tune.timeout_s)")
    p.add_argument("--jobs", type=int, help="parallel worker processes (tune.jobs)")
    p.add_argument("--study", help="study name (tune.study)")
    p.add_argument("--storage", help="study database URL (tune.storage; default optuna.db)")
    p.add_argument("--apply", action="store_true", help="run the winner through `dvc exp run`")
    p.add_argument("--params", default="params.yaml", help="the params file")
    p.add_argument("--data", default="data/processed", help="the preprocess stage's output")
    p.add_argument("--out", default="reports/tune", help="best_params.json and figures")
    return p


def _settings(args: argparse.Namespace) -> Setup:
    from nnops import tracking
    from nnops.io import repo_root

    params = load_params(args.params)
    if params.tune is None:
        raise ConfigError(f"{args.params}: no tune section (see docs/tuning.md)")
    if params.train.distribute == "multi_worker":
        raise ConfigError(
            "train.distribute: received 'multi_worker'; nnops tune trains each trial in one "
            "process (allowed: 'none' or 'mirrored'; parallel trials come from --jobs)"
        )
    changes = {"trials": args.trials, "timeout_s": args.timeout, "jobs": args.jobs}
    changes |= {"study": args.study, "storage": args.storage}
    raw = params.tune.model_dump() | {k: v for k, v in changes.items() if v is not None}
    try:
        tune = TuneParams.model_validate(raw)
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        key = ".".join(map(str, first["loc"]))
        got = f"received {first['input']!r}; " if "input" in first else ""
        raise ConfigError(f"command line: tune.{key}: {got}{first['msg'].lower()}") from None
    from nnops.tune_data import check_up_to_date
    from nnops.tune_space import check_space

    try:
        check_space(tune.space, params.train, tuning=True)
    except ValueError as exc:
        raise ConfigError(f"{args.params}: {exc}") from None
    check_up_to_date(args.data)
    uri = tracking.connect(params.mlflow)
    return Setup(params, tune, storage_url(tune, repo_root()), uri, args.data)


def main(argv: list[str] | None = None, prog: str = "nnops tune") -> int:
    """Run ``nnops tune``; return the exit status (2 on bad input, 130 when interrupted).

    Args:
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
        prog: the program name used in messages.
    """
    from nnops.stage import start_command

    args = start_command(parser(prog), argv)
    out = Path(args.out)
    setup = None
    try:
        setup, before = begin(_settings(args))
        optimise(setup, setup.tune.trials, before)
        summary = finish(setup, out, "FINISHED")
    except (ConfigError, NnopsError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        if setup is not None and setup.parent_run_id:
            finish(setup, out, "FAILED")
        return 2
    except KeyboardInterrupt:
        if setup is not None and setup.parent_run_id:
            finish(setup, out, "KILLED")
        print(f"{prog}: interrupted; run it again to continue the study", file=sys.stderr)
        return 130
    t = summary["trials"]
    print(
        f"{prog}: study {summary['study']!r}: {t['complete']} complete, {t['pruned']} pruned, "
        f"{t['fail']} failed; {summary['epochs']} epochs; MLflow parent run "
        f"{summary['parent_run_id']}"
    )
    if "best_value" not in summary:
        print(f"{prog}: no trial has completed yet; nothing to apply", file=sys.stderr)
        return 1
    print(f"best trial {summary['best_trial']}: {summary['metric']} {summary['best_value']:.4f}")
    print(f"best params -> {out / BEST_FILE}")
    print(f"apply with:\n  {summary['command']}")
    if args.apply:
        from nnops.tune_data import check_best

        try:
            check_best(summary, setup.data_dir)
        except NnopsError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        return apply_best(out / BEST_FILE, summary["overrides"])
    return 0
