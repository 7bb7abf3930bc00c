"""Tracking edge: where the store is, failing fast, one run that survives a resume, epochs once."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, section, stage_in_process
from nnops.errors import NnopsError
from nnops.lineage import git_state
from nnops.tracking import (
    connect,
    experiment_id,
    read_run_info,
    resolve_tracking_uri,
    write_run_info,
)
from nnops.training_run import EpochLogger, fail_run, start_training_run

pytestmark = pytest.mark.unit

HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_mlflow_globals():
    """``connect`` points the process at a store and bounds HTTP retries: undo both after."""
    import os

    import mlflow

    before = {k: os.environ.get(k) for k in HTTP_ENV}
    yield
    mlflow.set_tracking_uri(None)
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uri_precedence_env_then_params_then_embedded(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    default = resolve_tracking_uri(section("mlflow"))
    assert default == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(section("mlflow", tracking_uri="http://h:1")) == "http://h:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:2")
    assert resolve_tracking_uri(section("mlflow", tracking_uri="http://h:1")) == "http://env:2"


def test_queued_experiments_use_the_main_repository_store(tmp_path, monkeypatch):
    main, copy = tmp_path / "main", tmp_path / "main" / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(main))
    assert resolve_tracking_uri(section("mlflow")) == f"sqlite:///{main.resolve()}/mlflow.db"


# A hang fails the test at the timeout (pytest-timeout) instead of a timed assertion passing late.
@pytest.mark.timeout(120)
def test_unreachable_server_fails_naming_the_uri(monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(NnopsError, match=uri.replace(".", r"\.") + ".*cannot be reached"):
        connect(section("mlflow", connect_timeout_s=5))


@pytest.mark.timeout(120)
def test_hung_server_fails_instead_of_hanging_naming_the_uri(monkeypatch):
    with socket.socket() as server:  # accepts TCP connections, never answers HTTP
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        for key in HTTP_ENV:
            monkeypatch.delenv(key, raising=False)
        # connect() keeps a user's value (the default is two tries of 5 s): one second suffices
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
        with pytest.raises(NnopsError, match=f"{uri.replace('.', '[.]')} did not answer"):
            connect(section("mlflow", connect_timeout_s=2))


def test_run_continues_after_a_resume_and_logs_each_epoch_once(mlflow_store):
    from mlflow import MlflowClient

    uri = mlflow_store
    flat = {"train.epochs": 3, "train.hidden_layers.0.units": 64, "mlflow.tracking_uri": None}
    info = start_training_run(uri, "unit", flat, {"git.commit": "abc"})
    logger = EpochLogger(info)
    logger(1, {"loss": 1.0, "val_loss": 1.5})
    logger(2, {"loss": 0.5, "val_loss": 1.0})

    # The stage is stopped (Ctrl-C) and rerun: it continues the same run with a fresh logger.
    fail_run(info, "KILLED", 2, "stopped by SIGINT at epoch 2")
    again = start_training_run(uri, "unit", flat, {}, resume_id=info.run_id)
    assert again.run_id == info.run_id
    resumed = EpochLogger(again)
    resumed.catch_up([{"epoch": 1, "loss": 1.0, "val_loss": 1.5}])  # already there: skipped
    resumed(2, {"loss": 0.5, "val_loss": 1.0})
    resumed(3, {"loss": 0.25, "val_loss": 0.9})

    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3]
    run = client.get_run(info.run_id)
    assert run.data.params["train.hidden_layers.0.units"] == "64"
    assert run.data.params["mlflow.tracking_uri"] == "None"
    assert run.data.tags["git.commit"] == "abc" and run.data.tags["nnops.resumed"] == "true"
    assert run.info.status == "RUNNING"
    # The interruption is kept as history, not as how the run ended.
    assert "nnops.end_reason" not in run.data.tags and "nnops.ended_at_epoch" not in run.data.tags
    assert run.data.tags["nnops.interrupted_end_reason"] == "stopped by SIGINT at epoch 2"
    assert run.data.tags["nnops.interrupted_ended_at_epoch"] == "2"

    # A resume id that is not in the store starts a new run instead of failing.
    fresh = start_training_run(uri, "unit", flat, {}, resume_id="0" * 32)
    assert fresh.run_id != info.run_id


def test_embedded_store_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # not where artifacts should go
    store = tmp_path / "repo"
    uri = f"sqlite:///{store}/mlflow.db"
    store.mkdir()
    exp = experiment_id(uri, "nnops")
    assert experiment_id(uri, "nnops") == exp
    location = MlflowClient(uri).get_experiment(exp).artifact_location
    assert location == (store / "mlartifacts").as_uri()


def test_run_info_round_trip_and_missing_keys(tmp_path):
    from nnops.tracking import RunInfo

    path = tmp_path / "run.json"
    write_run_info(path, RunInfo("r1", "e1", "sqlite:///x.db", "models:/m-1", {"a": 1}))
    assert read_run_info(path).model_uri == "models:/m-1"
    path.write_text('{"run_id": "r1"}')
    with pytest.raises(NnopsError, match="experiment_id, tracking_uri"):
        read_run_info(path)


def test_git_state_reports_commit_and_dirty_flag(tmp_path):
    import subprocess

    from conftest import project_env

    env = project_env()
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, env=env, check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run(["git", "add", "a.txt"], cwd=tmp_path, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "c"], cwd=tmp_path, env=env, check=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / ".gitignore").write_text("/a\n")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "c"], cwd=tmp_path, env=env, check=True)
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] == "false"
    # What the pipeline run itself rewrites does not make the workspace dirty.
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (tmp_path / ".gitignore").write_text("/a\n/b\n")
    assert git_state(tmp_path)["dirty"] == "false"
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path)["dirty"] == "true"
    assert git_state(Path("/"))["commit"] == "unknown"


def test_resume_run_names_a_missing_store_or_run(tmp_path, mlflow_store):
    from mlflow import MlflowClient

    from nnops.tracking import RunInfo, resume_run

    elsewhere = RunInfo("0" * 32, "1", f"sqlite:///{tmp_path}/other-checkout/mlflow.db")
    with pytest.raises(NnopsError, match="does not exist here"), resume_run(elsewhere):
        pass
    assert not (tmp_path / "other-checkout").exists()  # no empty store left behind

    uri = mlflow_store
    exp = experiment_id(uri, "nnops")
    with (
        pytest.raises(NnopsError, match="is not in the store"),
        resume_run(RunInfo("0" * 32, exp, uri)),
    ):
        pass
    kind = MlflowClient(uri).get_experiment(exp).tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development"


@pytest.fixture
def store_with_a_run(tmp_path, monkeypatch, mlflow_store):
    """A real embedded store with one run, and the files a later stage reads."""
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    uri = mlflow_store
    info = start_training_run(uri, "e", {"a": 1}, {})
    write_run_info(tmp_path / "run.json", dataclasses.replace(info, model_uri="models:/m-1"))
    (tmp_path / "metrics.json").write_text('{"test": {"accuracy": 0.5}}')
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return db


@pytest.mark.parametrize("damage", ["half_truncated", "zero_bytes", "not_sqlite"])
def test_a_damaged_store_gives_one_line_naming_the_file(
    store_with_a_run: Path, damage: str, capsys: pytest.CaptureFixture[str]
):
    db = store_with_a_run
    if damage == "half_truncated":
        with db.open("r+b") as fh:
            fh.truncate(db.stat().st_size // 2)
        expected = f"{db}: the MLflow store is damaged ("
    elif damage == "zero_bytes":
        db.write_bytes(b"")
        expected = f"{db}: the MLflow store is an empty file (0 bytes)"
    else:
        db.write_text("hello")
        expected = f"{db}: the MLflow store is not an sqlite database"
    size = db.stat().st_size
    with pytest.raises(NnopsError) as err:
        connect(section("mlflow", tracking_uri=f"sqlite:///{db}"))
    assert str(err.value).startswith(expected) and "restore it from a backup" in str(err.value)
    # The register stage (a later stage reading the store) says the same in one line, exit 2,
    # once its own input files have been read: as a process for one kind of damage, in this
    # process for the others (the same code path after connect).
    data = db.parent / "processed"
    data.mkdir()
    np.savez(data / "test.npz", x_raw=np.zeros((2, 3), np.float32), y=np.array([0, 1]))
    (data / "meta.json").write_text('{"class_names": ["a", "b"]}')
    args = ["--run", "run.json", "--metrics", "metrics.json", "--data", str(data),
            "--out", "registry.json"]  # fmt: skip
    if damage == "half_truncated":
        cmd = [sys.executable, str(REPO / "pipelines/register.py"), *args]
        proc = subprocess.run(cmd, cwd=db.parent, capture_output=True, text=True)
    else:
        proc = stage_in_process("register", args, db.parent, capsys)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert db.stat().st_size == size  # never replaced by a silent fresh store
    assert not (db.parent / "registry.json").exists()


def test_a_copied_project_logs_into_its_own_store_not_the_one_it_came_from(
    tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
):
    from nnops.tracking import read_run_info, store_uri, write_run_info

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (original / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(tmp_path / "mlflow.db", original / "mlflow.db")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(original)
    info = start_training_run(f"sqlite:///{original / 'mlflow.db'}", "e", {"a": 1}, {})
    write_run_info(original / "run.json", info)
    assert info.extra["embedded_store"] is True  # trained in the project's own store

    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    copied = read_run_info(copy / "run.json")
    assert copied.tracking_uri == f"sqlite:///{original / 'mlflow.db'}"  # as recorded
    assert store_uri(copied, 5) == f"sqlite:///{(copy / 'mlflow.db').resolve()}"

    # A store named in params (or anywhere else than the project's own) is followed as recorded.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by mlflow.set_tracking_uri
    elsewhere = dataclasses.replace(copied, extra={"run_name": "x"})
    assert store_uri(elsewhere, 5) == f"sqlite:///{original / 'mlflow.db'}"


def test_the_dvc_lock_logged_with_a_run_masks_url_secrets(tmp_path: Path, mlflow_store: str):
    import mlflow

    from nnops.lineage import LOCK_ARTIFACT, log_dvc_lock

    lock = ("stages:\n  ingest:\n    deps:\n    - path: https://h/d.csv?token=tok-123\n"
            "      etag: abc\n    - path: inputs/x.csv\n      md5: 0f\n")  # fmt: skip
    (tmp_path / "dvc.lock").write_text(lock)
    client = mlflow.MlflowClient(mlflow_store)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    mlflow.set_tracking_uri(mlflow_store)
    try:
        log_dvc_lock(run.info.run_id, tmp_path)
    finally:
        mlflow.set_tracking_uri(None)
    logged = client.download_artifacts(run.info.run_id, LOCK_ARTIFACT, str(tmp_path / "dl"))
    text = Path(logged).read_text()
    assert "tok-123" not in text and "path: https://h/d.csv?token=***" in text
    assert "path: inputs/x.csv\n      md5: 0f" in text
    assert (tmp_path / "dvc.lock").read_text() == lock  # the workspace's lock is left alone
