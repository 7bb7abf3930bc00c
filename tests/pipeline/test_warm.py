"""Warm stage processes (nnops.warm): real stage scripts handed to a real server, against cold runs.

The module's server has its own directory and the whole preload list (TensorFlow included), so
the tests see the server the pipeline uses; each test checks from the server's log that its
stage really ran in a warm child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_project, project_env, run

pytestmark = [pytest.mark.pipeline, pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="warm servers need Linux")]  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """A warm-server directory of this module's own; its servers are stopped at the end."""
    from nnops.warm_server import stop_servers

    path = tmp_path_factory.mktemp("warm")
    path.chmod(0o700)
    yield path
    stop_servers(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("warm-project") / "repo", {"train": {"epochs": 3}})
    run([sys.executable, "pipelines/ingest.py"], cwd=root, env=project_env(NNOPS_WARM="0"))
    run([sys.executable, "pipelines/validate.py"], cwd=root, env=project_env(NNOPS_WARM="0"))
    run([sys.executable, "pipelines/preprocess.py"], cwd=root, env=project_env(NNOPS_WARM="0"))
    return root


def warm_env(home: Path, **extra: str) -> dict[str, str]:
    return project_env(NNOPS_WARM="1", NNOPS_WARM_DIR=str(home), **extra)


def ready_server(home: Path, env: dict[str, str], timeout_s: float = 240) -> dict:
    """Start the server for ``env`` (as the first stage does) and wait until it has preloaded."""
    from nnops.warm_server import ping

    code = ("from nnops import warm; key = warm.server_key(); print(key); "
            "warm.start_server(warm.runtime_dir(), key)")  # fmt: skip
    key = run([sys.executable, "-c", code], cwd=home, env=env).stdout.strip()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # this env's server, not another one in ``home``
        state = ping(home / f"{key}.sock")
        if state and state["ready"]:
            return state
        time.sleep(0.5)
    logs = "\n".join(p.read_text() for p in home.glob("*.log"))
    pytest.fail(f"no warm server became ready in {timeout_s} s:\n{logs[-3000:]}")


def jobs_for(home: Path, stage_pid: int) -> list[int]:
    """The warm children the server forked for stage process ``stage_pid`` (from its log)."""
    text = "\n".join(p.read_text() for p in home.glob("*.log"))
    return [int(m) for m in re.findall(rf"job (\d+): \S+ for stage process {stage_pid} ", text)]


def run_stage(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, str, int]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err, proc.pid


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(path, safe_mode=True).get_weights()


def test_warm_training_is_bit_identical_to_cold_training(home: Path, project: Path):
    env = warm_env(home)
    server = ready_server(home, env)
    cmd = [sys.executable, "pipelines/train.py", "--out", "warm/models", "--reports", "warm/rep"]
    code, _, err, pid = run_stage(cmd, project, env)
    assert code == 0, err
    assert len(jobs_for(home, pid)) == 1, "the stage did not run in a warm child"
    cold = [sys.executable, "pipelines/train.py", "--out", "cold/models", "--reports", "cold/rep"]
    code, _, cold_err, _ = run_stage(cold, project, project_env(NNOPS_WARM="0"))
    assert code == 0, cold_err

    for a, b in zip(_weights(project / "warm/models/model.keras"),
                    _weights(project / "cold/models/model.keras"), strict=True):  # fmt: skip
        assert np.array_equal(a, b)
    assert (project / "warm/rep/history.csv").read_text() == (
        project / "cold/rep/history.csv"
    ).read_text()

    # The same log lines, in the same order, less the MLflow run ids, times and out folders.
    def lines(text: str) -> list[str]:
        return [re.sub(r"[0-9a-f]{32}|train-\d{8}-\d{6}|warm/|cold/", "<id>", line)
                for line in text.splitlines()]  # fmt: skip

    assert lines(err) == lines(cold_err)
    # The MLflow run names the stage process DVC would have started, not the warm child.
    from mlflow import MlflowClient

    info = json.loads((project / "warm/models/run.json").read_text())
    tags = MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).data.tags
    assert tags["nnops.pid"] == str(pid)
    assert server["pid"] != pid


def test_a_failing_stage_exits_the_same_way_warm(home: Path, project: Path):
    env = warm_env(home)
    ready_server(home, env)
    (project / "bad.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
    params = project / "bad.yaml"
    params.write_text(
        (project / "params.yaml").read_text().replace("source: digits", "source: csv")
        .replace("path: inputs/embedded.txt", "path: bad.csv")
    )  # fmt: skip
    cmd = [sys.executable, "pipelines/ingest.py", "--params", "bad.yaml", "--out", "bad/raw"]
    warm_code, _, warm_err, pid = run_stage(cmd, project, env)
    cold_code, _, cold_err, _ = run_stage(cmd, project, project_env(NNOPS_WARM="0"))
    assert jobs_for(home, pid), "the stage did not run in a warm child"
    assert warm_code == cold_code == 2
    assert warm_err == cold_err and "ingest: error:" in warm_err and "'b'" in warm_err
    assert "Traceback" not in warm_err and not (project / "bad/raw").exists()


def _train_until_epoch(project: Path, env: dict[str, str], tag: str) -> subprocess.Popen:
    cmd = [sys.executable, "pipelines/train.py", "--params", "long.yaml",
           "--out", f"{tag}/models", "--reports", f"{tag}/rep"]  # fmt: skip
    params = project / "long.yaml"
    if not params.exists():
        params.write_text(
            (project / "params.yaml").read_text().replace("epochs: 3", "epochs: 400", 1)
        )
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stderr:
        if "epoch 2 done" in line:
            return proc
    pytest.fail(f"training ended before epoch 2: exit {proc.wait()}")


def test_sigterm_reaches_the_warm_child_and_its_exit_comes_back(home: Path, project: Path):
    env = warm_env(home)
    ready_server(home, env)
    proc = _train_until_epoch(project, env, "term")
    children = jobs_for(home, proc.pid)
    assert len(children) == 1
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 143
    assert "train: stopped by SIGTERM" in rest and "Traceback" not in rest
    assert not _alive(children[0])


def test_a_killed_stage_process_takes_its_warm_child_with_it(home: Path, project: Path):
    env = warm_env(home)
    ready_server(home, env)
    proc = _train_until_epoch(project, env, "kill")
    (child,) = jobs_for(home, proc.pid)
    assert _alive(child)
    proc.kill()
    proc.wait(timeout=60)
    proc.stderr.close()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the warm child outlived its stage process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes: the server reaps it a moment later
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_code_edits_take_effect_without_restarting_the_server(tmp_path: Path, home: Path):
    """The server keeps third-party libraries only: each child imports nnops afresh."""
    root = make_project(tmp_path / "repo")
    env = warm_env(home, PYTHONPATH=str(root / "src"), NNOPS_WARM_PRELOAD="numpy,pandas")
    ready_server(home, env)
    cmd = [sys.executable, "pipelines/ingest.py", "--out", "raw"]
    code, _, err, first = run_stage(cmd, root, env)
    assert code == 0 and "edited ingest" not in err, err
    module = root / "src/nnops/ingest.py"
    text = module.read_text()
    assert "\nlog = logging.getLogger(__name__)\n" in text
    module.write_text(
        text.replace(
            "\nlog = logging.getLogger(__name__)\n",
            "\nlog = logging.getLogger(__name__)\nlog.warning('edited ingest')\n",
        )
    )
    code, _, err, second = run_stage(cmd, root, env)
    assert code == 0 and "edited ingest" in err, err
    assert jobs_for(home, first) and jobs_for(home, second)  # both warm, one server


def test_off_means_no_server_and_stop_ends_them(tmp_path: Path, project: Path):
    from nnops.warm_server import servers

    off = tmp_path / "off"
    cmd = [sys.executable, "pipelines/ingest.py", "--out", "off/raw"]
    run(cmd, cwd=project, env=project_env(NNOPS_WARM="0", NNOPS_WARM_DIR=str(off)))
    assert not off.exists()

    on = tmp_path / "on"
    env = project_env(NNOPS_WARM="1", NNOPS_WARM_DIR=str(on), NNOPS_WARM_PRELOAD="numpy")
    first = run(cmd, cwd=project, env=env)  # no server yet: runs cold, starts one
    assert "started a warm server" in first.stderr
    ready_server(on, env)
    status = run([sys.executable, "-m", "nnops.cli", "warm", "status"], cwd=project, env=env)
    assert "1 warm server(s)" in status.stdout and ", ready, 0 stage(s) running" in status.stdout
    stop = run([sys.executable, "-m", "nnops.cli", "warm", "stop"], cwd=project, env=env)
    assert "stopped 1 warm server(s)" in stop.stdout
    assert servers(on) == {} and not list(on.glob("*.sock"))
