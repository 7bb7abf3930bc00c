"""Failure semantics through real DVC, real stage processes, real signals and a real MLflow store.

One digits project is reproduced once per module; each test leaves it as dvc.lock describes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import dvc, free_port, make_project, project_env, run, set_params

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

KEPT = (
    "models/model.keras",
    "models/run.json",
    "reports/train/history.csv",
    "reports/train/summary.json",
    "reports/metrics.json",
    "reports/registry.json",
    "reports/report.html",
    "data/raw/meta.json",
    "data/raw/data.parquet",
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A permissive gate, so that the digits model becomes @champion after three epochs.
    gate = {"min_test_accuracy": 0.5, "require_good_fit": False}
    params = {"train": {"epochs": 3}, "register": gate}
    root = make_project(tmp_path_factory.mktemp("failures") / "repo", params)
    dvc("repro", cwd=root)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in KEPT}


@pytest.mark.parametrize("failure", ["bad_param", "bad_data_file", "unreachable_server"])
def test_a_failed_stage_loses_nothing_and_names_the_command_that_restores(
    digits: Path, failure: str
):
    before = snapshot(digits)
    params = (digits / "params.yaml").read_text()
    try:
        if failure == "bad_param":  # refused by the first stage: no output is touched
            set_params(digits, {"train": {"epochs": 0}})
            gone, stage = None, "check_params"
        elif failure == "bad_data_file":
            (digits / "bad.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
            set_params(digits, {"data": {"source": "csv", "path": "bad.csv"}})
            gone, stage = "data/raw/data.parquet", "ingest"
        else:
            uri = f"http://127.0.0.1:{free_port()}"
            set_params(digits, {"mlflow": {"tracking_uri": uri, "connect_timeout_s": 2}})
            gone, stage = "models/model.keras", "train"
        proc = dvc("repro", cwd=digits, check=False)
        assert proc.returncode != 0
        err = proc.stdout + proc.stderr
        assert f"{stage}: error:" in err and "Traceback" not in err
        assert "`dvc checkout` brings back the outputs of the last successful run" in err
        if gone is None:
            assert snapshot(digits) == before
        else:
            assert not (digits / gone).exists()  # DVC removed it before running the stage
        dvc("checkout", cwd=digits)  # the one command the message names
        assert snapshot(digits) == before
    finally:
        (digits / "params.yaml").write_text(params)
        (digits / "bad.csv").unlink(missing_ok=True)
    # check_params passed the edited params (when the failure came later) and recorded them; the
    # restored file reruns that check alone, and its unchanged marker reruns nothing after it.
    assert set(json.loads(dvc("status", "--json", cwd=digits).stdout)) <= {"check_params"}
    out = dvc("repro", cwd=digits).stdout
    assert "Running stage" not in out.replace("Running stage 'check_params'", ""), out
    assert "Data and pipelines are up to date" in dvc("status", cwd=digits).stdout


def _train(root: Path, tag: str, epochs: int = 400) -> subprocess.Popen:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"].update(epochs=epochs, batch_size=8, steps_per_execution=8)
    (root / f"{tag}.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "pipelines/train.py", "--params", f"{tag}.yaml",
           "--out", f"{tag}/models", "--reports", f"{tag}/reports"]  # fmt: skip
    # As from a terminal: a background job of a non-interactive shell (how CI may run us) starts
    # with SIGINT ignored, and Python then keeps it ignored; Ctrl-C in a terminal is not.
    return subprocess.Popen(cmd, cwd=root, env=project_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_epoch(root: Path, tag: str, proc: subprocess.Popen, epoch: int) -> str:
    meta = root / tag / "models/backup/training_metadata.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(meta.read_text())["epoch"] >= epoch:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return json.loads((root / tag / "models/backup/state.json").read_text())["run_id"]


def test_sigterm_and_sigint_end_the_run_killed_with_the_epoch_reached(digits: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{digits / 'mlflow.db'}")
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        tag = signum.name.lower()  # a fresh backup each: no resume of the other's run
        proc = _train(digits, tag)
        run_id = _wait_for_epoch(digits, tag, proc, 2)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err[-3000:]
        assert f"train: stopped by {signum.name}" in err and "Traceback" not in err
        run_ = client.get_run(run_id)
        assert run_.info.status == "KILLED"
        epoch = int(run_.data.tags["nnops.ended_at_epoch"])
        # the epoch reached: the last one whose metrics the run holds
        assert epoch >= 1 and epoch == max(
            m.step for m in client.get_metric_history(run_id, "loss")
        )
        assert run_.data.tags["nnops.end_reason"] == f"stopped by {signum.name} at epoch {epoch}"


def test_a_run_left_running_by_a_dead_process_is_closed_and_the_report_says_so(digits: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{digits / 'mlflow.db'}")
    proc = _train(digits, "sigkill")
    run_id = _wait_for_epoch(digits, "sigkill", proc, 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it

    cmd = [sys.executable, "pipelines/report.py", "--out", "sigkill/report"]
    out = run(cmd, cwd=digits)
    closed = client.get_run(run_id)
    assert closed.info.status == "KILLED"
    assert f"process {proc.pid}" in closed.data.tags["nnops.end_reason"]
    assert run_id in out.stderr
    html = (digits / "sigkill/report/report.html").read_text()
    assert "runs closed as KILLED" in html and run_id in html


def test_switching_to_a_csv_source_registers_a_new_lineage(digits: Path):
    """The README's 'bring your own CSV' path after a digits champion exists."""
    from mlflow import MlflowClient
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    frame = iris.data.assign(species=[iris.target_names[t] for t in iris.target])
    frame.to_csv(digits / "iris.csv", index=False)
    # default validate params: the drift check holds on a random split of iris (issue 11)
    set_params(digits, {"data": {"source": "csv", "path": "iris.csv", "label_column": "species"},
                        "train": {"epochs": 20}})  # fmt: skip
    assert json.loads((digits / "reports/registry.json").read_text())["alias"] == "champion"
    proc = dvc("repro", cwd=digits)
    log = proc.stdout + proc.stderr
    registry = json.loads((digits / "reports/registry.json").read_text())
    assert registry["registered"] is True and registry["version"] == "2"
    assert "was trained on another task (64 features" in registry["new_lineage"]
    assert "4 features (sepal length (cm)" in registry["new_lineage"]
    assert "register.model_name" in registry["reason"]
    assert "another task" in log and "Traceback" not in log
    assert (digits / "reports/report.html").is_file()
    client = MlflowClient(f"sqlite:///{digits / 'mlflow.db'}")
    version = client.get_model_version("nnops-mlp", "2")
    assert version.tags["nnops.decision"] in ("promoted", "rejected")
    assert version.tags["nnops.task"] != client.get_model_version("nnops-mlp", "1").tags.get(
        "nnops.task"
    )
    # A rerun is stable: nothing half-done is left for it to trip over.
    assert "Data and pipelines are up to date" in dvc("status", cwd=digits).stdout
    assert pd.read_csv(digits / "iris.csv").shape == (150, 5)
