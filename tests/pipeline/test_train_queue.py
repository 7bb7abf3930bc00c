"""Queued DVC experiments run in temporary workspace copies; their runs land in the main store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import dvc, make_project, project_env, run

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

BASELINE = {
    "train": {"epochs": 2},
    "explain": {"samples": 10},
    "register": {"min_test_accuracy": 0.5, "require_good_fit": False},
}


def _wait_for_queue(root: Path, timeout_s: float = 1200) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = dvc("queue", "status", cwd=root).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"queue still busy after {timeout_s} s:\n{status}")
        time.sleep(3)


def _check_experiment_run(client, found, name: str) -> None:
    import mlflow

    assert found.info.status == "FINISHED"
    assert found.data.tags["dvc.exp_name"] == name
    epochs = int(found.data.params["train.epochs"])
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "val_loss")]
    assert sorted(steps) == list(range(1, epochs + 1))
    # The model's files outlive the experiment's deleted temporary workspace.
    model_id = found.outputs.model_outputs[0].model_id
    model = mlflow.keras.load_model(f"models:/{model_id}")
    assert model.output_shape == (None, 10)


def test_queued_experiments_in_parallel_land_in_the_main_store(tmp_path: Path):
    import mlflow
    from mlflow import MlflowClient

    root = make_project(tmp_path / "repo", BASELINE)
    dvc("repro", cwd=root)
    env = project_env()
    run(["git", "add", "-A"], cwd=root, env=env)
    run(["git", "commit", "-qm", "baseline"], cwd=root, env=env)
    experiments = {"more-epochs": "train.epochs=3", "faster": "train.learning_rate=0.01"}
    for name, change in experiments.items():
        dvc("exp", "run", "--queue", "--name", name, "-S", change, cwd=root)
    dvc("queue", "start", "--jobs", "2", cwd=root)
    status = _wait_for_queue(root)
    assert status.count("Success") == 2, status

    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nnops")
    assert experiment.artifact_location == (root / "mlartifacts").resolve().as_uri()
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(experiments) <= set(runs), sorted(runs)
    assert len(runs) == 3  # the baseline and the two experiments, nothing doubled
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve through it
    try:
        for name in experiments:
            _check_experiment_run(client, runs[name], name)
    finally:
        mlflow.set_tracking_uri(None)
    assert runs["more-epochs"].data.params["train.epochs"] == "3"
    assert runs["faster"].data.params["train.learning_rate"] == "0.01"
    assert not list((root / ".dvc").rglob("mlflow.db"))  # no stray stores in the copies
    shown = json.loads(dvc("exp", "show", "--json", cwd=root).stdout)
    assert shown  # DVC still knows the experiments it ran
