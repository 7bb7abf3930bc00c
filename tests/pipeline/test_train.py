"""The train stage through real DVC and a real MLflow store: what lands, resuming, failing."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import dvc, make_project, project_env, run

pytestmark = pytest.mark.pipeline

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def _history(root: Path) -> list[dict[str, str]]:
    with (root / "reports/train/history.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(path, safe_mode=True).get_weights()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_repro_trains_and_the_run_shows_params_epochs_model_and_tags(reproduced_project: Path):
    import keras
    import mlflow
    from mlflow import MlflowClient

    from nnops.config import load_params

    root = reproduced_project
    info = json.loads((root / "models/run.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{root.resolve()}/mlflow.db"
    client = MlflowClient(info["tracking_uri"])
    run_ = client.get_run(info["run_id"])
    params = load_params(root / "params.yaml")

    # Every param under its dotted params.yaml name.
    flat = {k: str(v) for k, v in params.flat().items()}
    assert {k: run_.data.params.get(k) for k in flat} == flat
    assert run_.data.params["train.hidden_layers.1.units"] == "64"

    # Per-epoch metrics: one history per metric, one point per epoch, equal to history.csv.
    history = _history(root)
    epochs = params.train.epochs
    assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))
    for name in EPOCH_METRICS:
        points = client.get_metric_history(info["run_id"], name)
        assert sorted(p.step for p in points) == list(range(1, epochs + 1)), name
        by_step = {p.step: p.value for p in points}
        for row in history:
            assert by_step[int(row["epoch"])] == pytest.approx(float(row[name]), rel=1e-6)
    assert not [k for k in run_.data.metrics if k.startswith(("epoch_", "val_val", "lr"))]
    summary = json.loads((root / "reports/train/summary.json").read_text())
    assert run_.data.metrics["best_epoch"] == summary["best_epoch"]
    assert run_.data.metrics["restored_val_accuracy"] == pytest.approx(
        summary["restored"]["val_accuracy"]
    )

    # Tags: code, data, DVC, versions, device.
    tags = run_.data.tags
    head = run(["git", "rev-parse", "HEAD"], cwd=root).stdout.strip()
    assert tags["git.commit"] == head and tags["git.dirty"] in ("true", "false")
    meta = json.loads((root / "data/processed/meta.json").read_text())
    assert tags["data.hash"] == meta["data_hash"]
    assert tags["version.tensorflow"] == summary["versions"]["tensorflow"]
    assert tags["version.keras"] == keras.__version__
    assert tags["device"] and tags["strategy"] == "none"
    assert "dvc.exp_name" not in tags  # plain dvc repro, not an experiment

    # Dataset lineage, artifacts, and the model through the mlflow.keras flavor.
    contexts = {
        t.value
        for d in run_.inputs.dataset_inputs
        for t in d.tags
        if t.key == "mlflow.data.context"
    }
    assert {"training", "validation"} <= contexts
    files = {a.path for folder in ("validation", "train") for a in client.list_artifacts(
        info["run_id"], folder)}  # fmt: skip
    assert {"validation/validation.json", "train/history.csv", "train/summary.json"} <= files
    mlflow.set_tracking_uri(info["tracking_uri"])  # models:/ URIs resolve through it
    try:
        logged = mlflow.keras.load_model(info["model_uri"])
        model_info = mlflow.models.get_model_info(info["model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    assert model_info.signature is not None and model_info.saved_input_example_info
    local = keras.models.load_model(root / "models/model.keras", safe_mode=True)
    with np.load(root / "data/processed/test.npz", allow_pickle=False) as npz:
        x_raw, y = npz["x_raw"], npz["y"]
    np.testing.assert_allclose(logged.predict(x_raw, verbose=0), local.predict(x_raw, verbose=0))
    assert (local.predict(x_raw, verbose=0).argmax(1) == y).mean() > 0.8  # raw input works

    # The backup is cleared after success; the summary records how training ran.
    assert not (root / "models/backup").exists()
    assert summary["epochs_run"] == epochs and summary["resumed_from_epoch"] is None
    assert summary["strategy"] == "none" and summary["versions"]["keras"] == keras.__version__


def test_killed_training_resumes_from_its_backup_into_the_same_run(tmp_path: Path):
    from mlflow import MlflowClient

    params = {"train": {"epochs": 24, "batch_size": 8, "steps_per_execution": 8}}
    root = make_project(tmp_path / "repo", params)
    dvc("repro", "preprocess", cwd=root)
    # Cold: SIGKILL must stop the very process that trains, so the backup read below is final
    # (a warm stage's child dies a moment after its stage process; tests/pipeline/test_warm.py).
    env = project_env(NNOPS_WARM="0")
    cmd = [sys.executable, "pipelines/train.py", "--out", "models", "--reports", "reports/train"]
    meta = root / "models/backup/training_metadata.json"
    # The stage logs a line after each epoch is in the backup: read its log (a blocking read, no
    # polling) and kill it at epoch 3's line; the timer bounds the wait if that line never comes.
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    guard = threading.Timer(300, proc.kill)
    guard.start()
    try:
        seen: list[str] = []
        for line in proc.stderr:
            if "epoch 3 done" in line:
                seen.append(line)
                os.kill(proc.pid, signal.SIGKILL)
                break
        assert seen, "the stage ended without logging epoch 3"
    finally:
        guard.cancel()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = json.loads(meta.read_text())["epoch"]
    assert 3 <= done < 24
    run_id = json.loads((root / "models/backup/state.json").read_text())["run_id"]
    assert not (root / "models/run.json").exists()

    out = dvc("repro", "train", cwd=root)
    log = out.stdout + out.stderr
    assert f"resuming from models/backup after epoch {done}" in log
    info = json.loads((root / "models/run.json").read_text())
    assert info["run_id"] == run_id  # the same MLflow run, continued
    client = MlflowClient(info["tracking_uri"])
    for name in ("loss", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert sorted(steps) == list(range(1, 25)), name  # every epoch once, none twice
    assert client.get_run(run_id).info.status == "FINISHED"
    summary = json.loads((root / "reports/train/summary.json").read_text())
    assert summary["resumed_from_epoch"] == done and summary["epochs_run"] == 24
    assert not (root / "models/backup").exists()

    # An uninterrupted run of the same stage ends with exactly the same weights and history.
    ref = [sys.executable, "pipelines/train.py", "--out", "ref", "--reports", "ref_reports"]
    run(ref, cwd=root, env=env)
    for a, b in zip(_weights(root / "models/model.keras"), _weights(root / "ref/model.keras"),
                    strict=True):  # fmt: skip
        assert np.array_equal(a, b)
    with (root / "ref_reports/history.csv").open(newline="") as fh:
        assert list(csv.DictReader(fh)) == _history(root)


def test_unreachable_tracking_server_fails_the_stage_fast(project: Path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    env = project_env(MLFLOW_TRACKING_URI=uri)
    # Bounded by the subprocess timeout: a hang raises TimeoutExpired and fails the test.
    proc = run(
        [sys.executable, "pipelines/train.py"], cwd=project, env=env, check=False, timeout=120
    )
    assert proc.returncode == 2
    assert "train: error:" in proc.stderr and uri in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "models/model.keras").exists()


def test_gpu_requested_without_a_gpu_fails_clearly(tmp_path: Path):
    params = {"train": {"device": "gpu", "epochs": 1}}
    root = make_project(tmp_path / "repo", params)
    dvc("repro", "preprocess", cwd=root)
    proc = run([sys.executable, "pipelines/train.py"], cwd=root, check=False)
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    assert proc.returncode == 2
    assert "train: error: train.device=gpu but TensorFlow sees no GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
