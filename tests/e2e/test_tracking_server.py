"""Team mode: the pipeline logs to a real ``mlflow server`` started as ``make server`` starts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import dvc, project_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    cmd: list[str], url: str, cwd: Path, log: Path, timeout_s: float = 120
) -> Iterator[str]:
    """Run a server in its own process group until ``url`` answers 200; stop it afterwards.

    Args:
        cmd: the command line.
        url: a page that answers 200 once the server is up.
        cwd: the working directory.
        log: where the server's output goes (shown when it fails to start).
        timeout_s: how long to wait for it.
    """
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=project_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = log.read_text()[-4000:]
                pytest.fail(f"{url} did not answer within {timeout_s} s:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real tracking server (sqlite backend, proxied artifact root) on a free local port."""
    port = free_port()
    store = tmp_path / "server"
    cmd = [sys.executable, "-m", "nnops.ui", "server", "--port", str(port), "--workers", "1",
           "--store", str(store)]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with serving(cmd, f"{base}/health", tmp_path, tmp_path / "server.log"):
        yield base, store


def test_pipeline_run_lands_in_the_tracking_server(
    project: Path, tracking_server: tuple[str, Path]
) -> None:
    import mlflow

    uri, store = tracking_server
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
