"""DVC experiments on top of the pipeline: queued sweeps with parallel workers, picking the best.

All tests share one reproduced, committed baseline (few epochs, a register gate the short
training can pass), so experiments only rerun train and what follows it. Tests that change the
workspace work on copies; the sweep, last, runs in the baseline itself so that its store and
artifact root are the repository's own.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import dvc, make_project, project_env, run, set_params

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

GRID = {"train.batch_size": ("32", "128"), "train.learning_rate": ("0.001", "0.01")}
METRIC = "reports/metrics.json:test.accuracy"
# The baseline's batch size lies outside the grid, so every grid point is a new training run
# (an experiment identical to its baseline reruns nothing and shares the baseline's run).
BASELINE_PARAMS = {
    "train": {"epochs": 2, "batch_size": 64},
    "explain": {"samples": 10},
    "register": {"min_test_accuracy": 0.5, "require_good_fit": False},
}


def _ran(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Stages DVC ran, in order, from ``dvc repro`` / ``dvc exp run`` output."""
    return re.findall(r"Running stage '([\w-]+)'", proc.stdout + proc.stderr)


def _commit_all(root: Path, message: str) -> None:
    env = project_env()
    run(["git", "add", "-A"], cwd=root, env=env)
    run(["git", "commit", "-qm", message], cwd=root, env=env)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project reproduced once and committed: the baseline experiments branch from."""
    root = make_project(tmp_path_factory.mktemp("experiments") / "repo", BASELINE_PARAMS)
    dvc("repro", cwd=root)
    _commit_all(root, "baseline run")
    return root


def _copy(src: Path, dest: Path) -> Path:
    """A full copy of a reproduced project (git history, DVC cache and store included)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def test_noop_repro_runs_nothing_and_evaluate_params_rerun_only_downstream(
    baseline: Path, tmp_path: Path
) -> None:
    root = _copy(baseline, tmp_path / "repo")
    noop = dvc("repro", cwd=root)
    assert _ran(noop) == []
    assert "up to date" in noop.stdout

    set_params(root, {"evaluate": {"fit": {"max_accuracy_gap": 0.2}}})
    changed = dvc("repro", cwd=root)
    ran = set(_ran(changed))
    # Only the params check, evaluate and what reads its outputs (register and report, when
    # those outputs change); no data stage, no training, no explanation.
    allowed = {"check_params", "evaluate", "register", "report"}
    assert {"check_params", "evaluate"} <= ran <= allowed, ran
    assert dvc("status", "--quiet", cwd=root, check=False).returncode == 0


def test_a_validate_param_reruns_validation_and_the_report_but_never_training(
    baseline: Path, tmp_path: Path
) -> None:
    """A drift threshold or a predict-time flag is no reason to retrain and register a model."""
    import mlflow

    root = _copy(baseline, tmp_path / "repo")
    model = (root / "models/model.keras").read_bytes()
    set_params(root, {"validate": {"drift_alpha": 0.03, "drift_refuse_predict": True}})
    ran = set(_ran(dvc("repro", cwd=root)))
    # preprocess rechecks the verdict and writes the same data, so nothing after it reruns
    assert {"check_params", "validate", "preprocess", "report"} == ran, ran
    assert (root / "models/model.keras").read_bytes() == model
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    [run_] = client.search_runs([client.get_experiment_by_name("nnops").experiment_id])
    # the report logged the new validation record into the model's run
    logged = client.download_artifacts(run_.info.run_id, "validation/validation.json", tmp_path)
    assert Path(logged).read_text() == (root / "reports/validation/validation.json").read_text()
    assert dvc("status", "--quiet", cwd=root, check=False).returncode == 0


@pytest.mark.parametrize("stage", ["ingest", "validate", "preprocess", "report"])
def test_stages_without_a_model_do_not_import_tensorflow(
    baseline: Path, tmp_path: Path, stage: str
) -> None:
    root = _copy(baseline, tmp_path / "repo")
    proc = dvc("repro", "-f", "-s", stage, cwd=root, env=project_env(PYTHONPROFILEIMPORTTIME="1"))
    assert _ran(proc) == [stage]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert imported, "no import timings captured"
    heavy = sorted(m for m in imported if m.split(".")[0] in {"tensorflow", "keras"})
    assert heavy == [], f"{stage} imports {heavy[:5]}"


def _queue_done(root: Path, timeout_s: float) -> str:
    """Wait until no queued experiment is waiting or running; return ``dvc queue status``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = dvc("queue", "status", cwd=root).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"queue still busy after {timeout_s} s:\n{status}")
        time.sleep(5)


def _exp_table(root: Path, *args: str) -> list[dict[str, str]]:
    out = dvc("exp", "show", "--csv", "--hide-workspace", *args, cwd=root).stdout
    return list(csv.DictReader(io.StringIO(out)))


def test_queued_grid_with_two_workers_lands_four_runs_in_the_main_store(baseline: Path) -> None:
    import mlflow

    root = baseline  # in place: the store's artifact root belongs to this repository
    head = run(["git", "rev-parse", "HEAD"], cwd=root).stdout.strip()
    sets = [arg for key, values in GRID.items() for arg in ("-S", f"{key}={','.join(values)}")]
    queued = dvc("exp", "run", "--queue", *sets, cwd=root)
    assert queued.stdout.count("Queued experiment") == 4, queued.stdout

    dvc("queue", "start", "-j", "2", cwd=root)
    try:
        status = _queue_done(root, timeout_s=1800)
    finally:
        dvc("queue", "stop", cwd=root, check=False)
    assert "Failed" not in status, status
    assert status.count("Success") == 4, status

    names = [line.split()[1] for line in status.splitlines() if line.rstrip().endswith("Success")]
    for name in names:
        logs = dvc("queue", "logs", name, cwd=root).stdout
        assert "database is locked" not in logs and "duplicate column" not in logs, logs[-3000:]

    # dvc exp show: four experiments, each with its grid params and a test accuracy.
    rows = [r for r in _exp_table(root) if r["Experiment"] in names]
    assert len(rows) == 4, rows
    combos = {(r["train.batch_size"], r["train.learning_rate"]) for r in rows}
    assert combos == {
        (b, lr) for b in GRID["train.batch_size"] for lr in GRID["train.learning_rate"]
    }
    assert all(0.0 < float(r["test.accuracy"]) <= 1.0 for r in rows), rows

    # The main store (not the queue's temporary copies) holds exactly one finished run per
    # experiment, named after it, tagged with it and its baseline commit, carrying its metrics.
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nnops")
    every = client.search_runs([experiment.experiment_id])
    runs = [r for r in every if "dvc.exp_name" in r.data.tags]
    assert len(every) == 5, "the baseline run plus one run per experiment, no more, no less"
    by_name = {r.info.run_name: r for r in runs}
    assert sorted(by_name) == sorted(names) and len(runs) == 4, [r.info.run_name for r in runs]
    for row in rows:
        r = by_name[row["Experiment"]]
        assert r.info.status == "FINISHED"
        assert r.data.tags["dvc.exp_name"] == row["Experiment"]
        # The baseline commit: the commit the experiment's code and data came from.
        assert r.data.tags.get("dvc.baseline_rev", r.data.tags["git.commit"]) == head
        assert r.data.params["train.batch_size"] == row["train.batch_size"]
        assert r.data.params["train.learning_rate"] == row["train.learning_rate"]
        assert r.data.metrics["test.accuracy"] == pytest.approx(float(row["test.accuracy"]))
        assert "registry.version" in r.data.tags, "register did not log into the same run"
        artifacts = Path(r.info.artifact_uri.removeprefix("file://"))
        assert artifacts.is_relative_to(root.resolve()), r.info.artifact_uri
        assert any(artifacts.rglob("*")), f"no artifacts kept for {row['Experiment']}"

    # Pick the best by test accuracy, make it the workspace, and promote it through the gate.
    ranked = _exp_table(root, "--sort-by", METRIC, "--sort-order", "desc")
    ranked = [r for r in ranked if r["Experiment"] in names]
    best = ranked[0]
    assert float(best["test.accuracy"]) == max(float(r["test.accuracy"]) for r in rows)
    dvc("exp", "apply", best["Experiment"], cwd=root)
    promoted = dvc("repro", "-f", "-s", "register", cwd=root)
    assert _ran(promoted) == ["register"]
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert registry["run_id"] == by_name[best["Experiment"]].info.run_id
    assert registry["promoted"] and registry["alias"] == "champion", registry
    champion = client.get_model_version_by_alias(registry["model_name"], "champion")
    assert champion.run_id == by_name[best["Experiment"]].info.run_id
