"""Team mode: the pipeline logs to a real ``mlflow server`` started as ``make server`` starts it."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import MlflowServer, dvc, free_port, project_env, serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_pipeline_run_lands_in_the_tracking_server(project: Path, mlflow_server: MlflowServer):
    import mlflow

    uri, store = mlflow_server.uri, mlflow_server.store
    dvc("repro", cwd=project, env=project_env(MLFLOW_TRACKING_URI=uri))

    run_info = json.loads((project / "models" / "run.json").read_text())
    assert run_info["tracking_uri"] == uri
    # Nothing went to an embedded store in the project.
    assert not (project / "mlflow.db").exists()
    assert (store / "mlflow.db").is_file()

    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.001"
    assert run.data.params["train.epochs"] == "3"
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert run.data.metrics["test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.tags["fit"] == metrics["fit"]["verdict"]
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == 3, "one val_loss point per epoch"

    # Artifacts went through the server into its artifact root, not into the project.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert client.list_artifacts(run.info.run_id), "the run has no artifacts"
    assert any((store / "artifacts").rglob("*")), "the server's artifact root is empty"
    assert not (project / "mlruns").exists() and not (project / "mlartifacts").exists()

    # The model was registered in the server's registry and loads back through it.
    registry = json.loads((project / "reports" / "registry.json").read_text())
    assert registry["registered"]
    version = client.get_model_version(registry["model_name"], registry["version"])
    assert version.run_id == run.info.run_id


def test_ui_launcher_serves_the_embedded_store(project: Path, tmp_path: Path) -> None:
    """``make ui``: the UI answers on 127.0.0.1 and reads the project's sqlite store."""
    port = free_port()
    cmd = [sys.executable, "-m", "nnops.ui", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with serving(cmd, f"{base}/health", project, tmp_path / "ui.log"):
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 10}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.load(response)
    assert (project / "mlflow.db").is_file(), "the UI did not open the project's embedded store"
    assert [e["name"] for e in body["experiments"]] == ["Default"]
    assert f"http://127.0.0.1:{port}" in (tmp_path / "ui.log").read_text()
