"""An experiment run in a temporary workspace copy keeps its MLflow run and model in the main store.

The queued grid with parallel workers is tested in test_experiments.py; this checks what that
test does not: the copy's run logs each epoch once, the artifact root is the main repository's,
the logged model loads after DVC deleted the copy, and no stray store is left in the copies.
``dvc exp run --temp`` runs in the same kind of copy as a queued experiment, without a queue.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import dvc, make_project, project_env, run

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

BASELINE = {
    "train": {"epochs": 2},
    "explain": {"samples": 10},
    "register": {"min_test_accuracy": 0.5, "require_good_fit": False},
}


def test_experiment_in_a_temporary_copy_lands_in_the_main_store(tmp_path: Path):
    import mlflow
    from mlflow import MlflowClient

    root = make_project(tmp_path / "repo", BASELINE)
    dvc("repro", cwd=root)
    env = project_env()
    run(["git", "add", "-A"], cwd=root, env=env)
    run(["git", "commit", "-qm", "baseline"], cwd=root, env=env)
    dvc("exp", "run", "--temp", "--name", "more-epochs", "-S", "train.epochs=3", cwd=root)

    uri = f"sqlite:///{root.resolve()}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("nnops")
    assert experiment.artifact_location == (root / "mlartifacts").resolve().as_uri()
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 2 and "more-epochs" in runs, sorted(runs)  # baseline + the experiment
    found = runs["more-epochs"]
    assert found.info.status == "FINISHED"
    assert found.data.tags["dvc.exp_name"] == "more-epochs"
    assert found.data.params["train.epochs"] == "3"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "val_loss")]
    assert sorted(steps) == [1, 2, 3]  # each epoch once
    assert not list((root / ".dvc").rglob("mlflow.db"))  # no stray stores in the copies
    # The model's files outlive the experiment's deleted temporary workspace.
    mlflow.set_tracking_uri(uri)  # models:/ URIs resolve through it
    try:
        model_id = found.outputs.model_outputs[0].model_id
        model = mlflow.keras.load_model(f"models:/{model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    assert model.output_shape == (None, 10)
