"""Two local worker processes train together under MultiWorkerMirroredStrategy (TF_CONFIG)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_project, project_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def write_processed(folder: Path, n: int = 640, d: int = 16, k: int = 4, seed: int = 0) -> None:
    """A small ``data/processed`` following the preprocess stage's contract."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 16, size=(k, d))
    y = rng.integers(0, k, size=n).astype("int64")
    x_raw = np.clip(centers[y] + rng.normal(0, 3, size=(n, d)), 0, 16).astype("float32")
    folder.mkdir(parents=True)
    cuts = {"train": slice(0, 480), "val": slice(480, 560), "test": slice(560, n)}
    for split, rows in cuts.items():
        np.savez(folder / f"{split}.npz", x_raw=x_raw[rows], x=x_raw[rows] / 16, y=y[rows])
    (folder / "preprocessing.json").write_text(
        json.dumps({"method": "rescale", "scale": 1 / 16, "offset": 0.0})
    )
    meta = {
        "source": "fixture",
        "class_names": [str(c) for c in range(k)],
        "data_hash": "fixture-0",
        "splits": {s: r.stop - r.start for s, r in cuts.items()},
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_two_workers(root: Path, env_of: Callable[..., dict[str, str]]) -> list[tuple[int, str]]:
    """Run pipelines/train.py as the two workers of one TF_CONFIG cluster; return each one's exit
    status and output (stdout and stderr).

    Args:
        root: the project.
        env_of: builds a worker's environment from ``TF_CONFIG=...``.
    """
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        cmd = [sys.executable, "pipelines/train.py", "--out", f"w{index}",
               "--reports", f"w{index}/reports"]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=root, env=env_of(TF_CONFIG=json.dumps(tf_config)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )  # fmt: skip
    try:
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [(proc.returncode, out) for proc, out in zip(procs, outputs, strict=True)]


def test_two_workers_end_with_the_same_weights(tmp_path: Path):
    import keras

    params = {"train": {"epochs": 3, "distribute": "multi_worker", "steps_per_execution": 16}}
    root = make_project(tmp_path / "repo", params)
    write_processed(root / "data/processed")
    results = run_two_workers(root, project_env)
    for code, output in results:
        assert code == 0, output[-4000:]

    models = [keras.models.load_model(root / f"w{i}/model.keras", safe_mode=True) for i in (0, 1)]
    for a, b in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        assert np.array_equal(a, b)
    summaries = [json.loads((root / f"w{i}/reports/summary.json").read_text()) for i in (0, 1)]
    assert [s["strategy"] for s in summaries] == ["multi_worker", "multi_worker"]
    assert [s["replicas"] for s in summaries] == [2, 2]
    assert [s["is_chief"] for s in summaries] == [True, False]
    assert summaries[0]["epochs_run"] == 3 and summaries[0]["restored"]["val_accuracy"] > 0.5
    # Only the chief tracks the run; both logged why steps_per_execution does not apply.
    assert (root / "w0/run.json").exists() and not (root / "w1/run.json").exists()
    assert all(
        "train.distribute=multi_worker: the training loop runs all" in out for _, out in results
    )
    assert "Traceback" not in results[0][1]


MIRRORED = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from nnops.config import TrainParams, load_params
from nnops.distribute import Runtime
from nnops.train import TrainData, fit

rng = np.random.default_rng(0)
centers = rng.uniform(0, 16, size=(4, 16))
y = rng.integers(0, 4, size=500)
x = np.clip(centers[y] + rng.normal(0, 3, size=(500, 16)), 0, 16).astype("float32")
data = TrainData(x[:400], y[:400], x[400:], y[400:], 4, {"method": "none"})
weights = {}
for kind, strategy in [
    ("none", tf.distribute.get_strategy()),
    ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
]:
    keras.utils.set_random_seed(3)
    base = load_params(sys.argv[1]).train.model_dump()  # the repository's params.yaml
    params = TrainParams.model_validate(
        {**base, "epochs": 2, "batch_size": 30, "input_pipeline": "tf_data", "distribute": kind}
    )
    runtime = Runtime(strategy, kind, int(strategy.num_replicas_in_sync), True, 0)
    model, result = fit(data, params, runtime, backup_dir=None)
    weights[kind] = [w.tolist() for w in model.get_weights()]
    weights[kind + "_replicas"] = runtime.replicas
print("RESULT " + json.dumps(weights))
"""


def test_mirrored_over_two_replicas_matches_single_device_training(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED, str(REPO / "params.yaml")],
        capture_output=True, text=True, env=project_env(), timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["mirrored_replicas"] == 2
    # Each global batch of 30 is split 15/15 (and the last, short one unevenly) across the
    # replicas; the summed gradients equal single-device ones up to float rounding.
    for a, b in zip(result["none"], result["mirrored"], strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)
