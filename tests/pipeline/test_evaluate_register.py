"""evaluate and register stages: the stage scripts on hand-built inputs, then the real `dvc repro`.

The first group builds what the upstream stages hand over (a processed-data directory, a Keras
model with its preprocessing layer, the per-epoch history and an MLflow run in a real sqlite store)
and runs the stage scripts as the pipeline does. The second group runs the whole pipeline.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import (
    REPO,
    MlflowServer,
    dvc,
    free_port,
    make_project,
    project_env,
    run,
    section,
    set_params,
)
from nnops import registry as rg

pytestmark = pytest.mark.pipeline

NAME = "nnops-test-mlp"


def write_processed(root: Path) -> Path:
    """Write data/processed as the preprocess stage does, from scikit-learn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    x_va, x_te, y_va, y_te = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest
    )
    out = root / "data" / "processed"
    out.mkdir(parents=True)
    for name, xs, ys in (("train", x_tr, y_tr), ("val", x_va, y_va), ("test", x_te, y_te)):
        np.savez(out / f"{name}.npz", x_raw=xs, x=xs / 16.0, y=ys)
    (out / "preprocessing.json").write_text(
        json.dumps({"method": "rescale", "scale": 1 / 16, "offset": 0.0})
    )
    meta = {
        "source": "digits",
        "class_names": [str(i) for i in range(10)],
        "n_features": 64,
        "feature_names": [f"px_{i}" for i in range(64)],
        "image_shape": [8, 8],
        "splits": {"train": len(y_tr), "val": len(y_va), "test": len(y_te)},
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def train_model(root: Path, units: list[int], epochs: int, tag: str) -> Path:
    """Train with the train stage's own ``nnops.train.fit``, save models/model.keras and
    history.csv with its writers, log the model to a new MLflow run."""
    import mlflow
    from mlflow.models import infer_signature

    from nnops.config import HiddenLayer
    from nnops.distribute import configure_runtime
    from nnops.lineage import ARTIFACT_DIR, write_digests
    from nnops.tracking import RunInfo, write_run_info
    from nnops.train import fit, save_model, write_history_csv
    from nnops.train_data import load_processed

    data, _, _ = load_processed(root / "data" / "processed")
    x = data.x_train
    params = section(
        "train",
        hidden_layers=tuple(HiddenLayer(units=u, activation="relu", dropout=0.0) for u in units),
        epochs=epochs,
    )
    model, result = fit(data, params, configure_runtime(params), backup_dir=None)
    save_model(model, root / "models" / "model.keras")
    write_history_csv(root / "reports" / "train" / "history.csv", result.history)

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("nnops")
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment("nnops", artifact_location=(root / "mlartifacts").as_uri())
    )
    with mlflow.start_run(experiment_id=exp_id, run_name=tag) as active:
        signature = infer_signature(x[:5], model.predict(x[:5], verbose=0))
        info = mlflow.keras.log_model(
            model, name="model", signature=signature, pip_requirements=["keras"]
        )
        # The rows it learned from, as the train stage's TrackedRun.finish logs them.
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(write_digests(tmp, x, data.x_val)), ARTIFACT_DIR)
    write_run_info(
        root / "models" / "run.json",
        RunInfo(active.info.run_id, exp_id, uri, model_uri=info.model_uri),
    )
    return root / "models" / "model.keras"


def write_params(root: Path, curve: list[float] | None = None, **register: object) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["register"].update({"model_name": NAME, **register})
    data["evaluate"]["learning_curve"] = curve
    data["train"]["epochs"] = 5  # for the learning curve's retraining
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "params.yaml"


def stage(root: Path, name: str, *args: str, check: bool = True):
    script = REPO / "pipelines" / f"{name}.py"
    return run(
        [sys.executable, str(script), "--params", "params.yaml", *args],
        cwd=root,
        env=project_env(),
        check=check,
    )


def good_project(root: Path) -> Path:
    """A project directory with the upstream outputs of a well-trained default model."""
    write_processed(root)
    train_model(root, [64, 64], 20, "good")
    write_params(root)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared project for the tests that only run evaluate or fail before registering."""
    return good_project(tmp_path_factory.mktemp("stages"))


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A project of its own, with an empty registry, for a test that registers models."""
    return good_project(tmp_path / "project")


# Runs a stage script and says on stderr whether the process imported TensorFlow.
TRACED = """\
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("tensorflow imported:", "tensorflow" in sys.modules, file=sys.stderr)
"""


def traced_stage(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    """Run a stage in this very process (cold: a warm child's imports are not this process's)
    and report whether it imported TensorFlow."""
    script = str(REPO / "pipelines" / f"{name}.py")
    return run([sys.executable, "-c", TRACED, script, "--params", "params.yaml"], cwd=root,
               env=project_env(NNOPS_WARM="0"))  # fmt: skip


def test_evaluate_stage_writes_metrics_plots_and_logs_to_the_training_run(built: Path):
    import mlflow

    proc = stage(built, "evaluate")
    assert "fit: good fit" in proc.stdout
    metrics = json.loads((built / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"train", "val", "test", "fit"}
    for split in ("train", "val", "test"):
        assert set(metrics[split]) == {"loss", "accuracy", "f1_macro"}
    assert metrics["test"]["accuracy"] > 0.9
    assert metrics["fit"]["verdict"] == "good fit"
    assert metrics["fit"]["last_epoch"] == 20

    evaluation = json.loads((built / "reports" / "evaluation.json").read_text())
    f1s = [row["f1"] for row in evaluation["per_class"]]
    assert f1s == sorted(f1s, reverse=True) and len(f1s) == 10
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert matrix.sum() == evaluation["splits"]["test"]["n"]
    assert evaluation["recommended_action"] and evaluation["evidence"]

    plots = built / "reports" / "plots"
    with (plots / "confusion_test.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == matrix.sum()
    agree = sum(r["actual"] == r["predicted"] for r in rows)
    assert agree == np.trace(matrix)
    for png in ("loss.png", "accuracy.png", "confusion_test.png"):
        assert (plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    info = json.loads((built / "models" / "run.json").read_text())
    client = mlflow.MlflowClient(info["tracking_uri"])
    logged = client.get_run(info["run_id"])
    assert logged.data.tags["fit"] == "good fit"
    assert logged.data.metrics["test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert logged.data.metrics["fit.accuracy_gap"] == pytest.approx(metrics["fit"]["accuracy_gap"])
    artifacts = {Path(a.path).name for a in client.list_artifacts(info["run_id"], "evaluation")}
    assert {"loss.png", "accuracy.png", "confusion_test.png", "metrics.json"} <= artifacts


def test_evaluate_stage_names_a_missing_input_and_keeps_previous_outputs(built: Path):
    metrics = built / "reports" / "metrics.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    before = metrics.read_bytes() if metrics.exists() else None
    proc = stage(built, "evaluate", "--history", "reports/train/nope.csv", check=False)
    assert proc.returncode == 2
    assert "evaluate: error: reports/train/nope.csv: file not found (did the train stage run?)" in (
        proc.stderr
    )
    assert (metrics.read_bytes() if metrics.exists() else None) == before


def test_evaluate_stage_retrains_on_shares_for_the_learning_curve(built: Path):
    write_params(built, curve=[0.2, 1.0])
    try:
        proc = stage(built, "evaluate")
    finally:
        write_params(built)
    assert "learning curve: 251 rows (20%)" in proc.stderr
    curve = json.loads((built / "reports" / "evaluation.json").read_text())["learning_curve"]
    assert [r["fraction"] for r in curve] == [0.2, 1.0]
    assert curve[0]["train_size"] < curve[1]["train_size"] == 1257
    assert curve[1]["val_accuracy"] > curve[0]["val_accuracy"]
    with (built / "reports" / "plots" / "learning_curve.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert (built / "reports" / "plots" / "learning_curve.png").is_file()


def test_first_model_becomes_champion_then_a_worse_one_does_not(fresh: Path):
    built = fresh
    import mlflow

    stage(built, "evaluate")
    first_metrics = json.loads((built / "reports" / "metrics.json").read_text())
    proc = stage(built, "register")
    registry = json.loads((built / "reports" / "registry.json").read_text())
    assert registry["promoted"] is True, registry
    assert registry["alias"] == "champion" and registry["previous_champion"] is None
    assert "first model" in registry["reason"]
    assert "version 1" in proc.stdout
    uri = f"sqlite:///{built / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    champ = client.get_model_version_by_alias(NAME, "champion")
    assert str(champ.version) == "1"
    assert champ.tags["nnops.promoted"] == "true"
    assert champ.tags["nnops.previous_champion"] == "none"
    first_run = champ.tags["nnops.run_id"]

    # Rerunning register for the same run neither registers again nor moves the alias, and
    # its record still says why the version was promoted (as after an interrupted register).
    first_record = json.loads((built / "reports" / "registry.json").read_text())
    stage(built, "register")
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    again = json.loads((built / "reports" / "registry.json").read_text())
    assert again["reason"] == f"already champion ({first_record['reason']})"
    assert again["gates"] == first_record["gates"] and again["gates"]
    assert again["previous_champion"] is None and again["promoted"] is True

    # A smaller, briefly trained model: relax the absolute bounds so that only the champion
    # comparison decides, and it must fail it.
    recorded = champ.tags["nnops.test_accuracy"]
    assert float(recorded) == first_metrics["test"]["accuracy"]
    train_model(built, [8], 3, "worse")
    write_params(built, min_test_accuracy=0.1, require_good_fit=False)
    stage(built, "evaluate")
    # The champion's score on this test data was recorded at its registration: no TensorFlow.
    proc = traced_stage(built, "register")
    assert "tensorflow imported: False" in proc.stderr, proc.stderr
    registry = json.loads((built / "reports" / "registry.json").read_text())
    assert registry["champion_accuracy"] == float(recorded)
    assert registry["promoted"] is False and registry["version"] == "2"
    assert registry["alias"] == "challenger"
    assert registry["failed_gates"] == ["not_worse_than_champion"]
    gate = next(g for g in registry["gates"] if g["name"] == "not_worse_than_champion")
    assert gate["margin"] < 0 and f"worse by {-gate['margin']:.4f}" in gate["detail"]
    assert client.get_model_version_by_alias(NAME, "champion").tags["nnops.run_id"] == first_run
    challenger = client.get_model_version_by_alias(NAME, "challenger")
    assert str(challenger.version) == "2" and challenger.tags["nnops.promoted"] == "false"

    # With the default bounds the same model fails the absolute gates too, each with its margin.
    write_params(built)
    stage(built, "register")
    registry = json.loads((built / "reports" / "registry.json").read_text())
    assert "min_test_accuracy" in registry["failed_gates"]
    assert "require_good_fit" in registry["failed_gates"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    # Other test data (its last row dropped): the champion is loaded and scored on it.
    test_npz = built / "data" / "processed" / "test.npz"
    with np.load(test_npz) as f:
        arrays = {k: f[k][:-1] for k in f.files}
    np.savez(test_npz, **arrays)
    proc = traced_stage(built, "register")
    assert "tensorflow imported: True" in proc.stderr
    assert "scoring champion version 1 on this test data" in proc.stderr
    rescored = json.loads((built / "reports" / "registry.json").read_text())["champion_accuracy"]
    assert rescored == rg.score_model(f"models:/{NAME}@champion", arrays["x_raw"], arrays["y"])

    # Test data holding three of the champion's training rows (as after a reshuffle): they
    # would flatter it, so the train stage's row digests exclude them from the comparison.
    with np.load(built / "data" / "processed" / "train.npz") as f:
        for key in arrays:
            arrays[key][:3] = f[key][:3]
    np.savez(test_npz, **arrays)
    proc = stage(built, "register")
    n = len(arrays["y"])
    assert f"champion version 1 trained on 3 of the {n} test rows" in proc.stderr, proc.stderr
    registry = json.loads((built / "reports" / "registry.json").read_text())
    assert registry["champion_trained_on_test_rows"] == 3 and registry["compared_rows"] == n - 3
    x, y = arrays["x_raw"][3:], arrays["y"][3:]
    assert registry["champion_accuracy"] == rg.score_model(f"models:/{NAME}@champion", x, y)


def test_bad_run_file_fails_clearly(tmp_path: Path, built: Path):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "abc"}))
    proc = stage(
        built,
        "register",
        "--run",
        str(tmp_path / "run.json"),
        "--out",
        str(tmp_path / "registry.json"),
        check=False,
    )
    assert proc.returncode == 2
    assert "register: error:" in proc.stderr and "missing key(s) experiment_id" in proc.stderr
    assert not (tmp_path / "registry.json").exists()


def test_register_with_the_tracking_server_gone_fails_clearly_and_keeps_the_record(built: Path):
    if not (built / "reports" / "metrics.json").is_file():
        stage(built, "evaluate")
    record = built / "reports" / "registry.json"
    record.write_text('{"from": "an earlier run"}')
    before = record.read_bytes()
    env = project_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    script = REPO / "pipelines" / "register.py"
    proc = run(
        [sys.executable, str(script), "--params", "params.yaml"], cwd=built, env=env, check=False
    )
    assert proc.returncode == 2
    assert "register: error: MLflow tracking server at http://127.0.0.1:" in proc.stderr
    assert (built / "reports" / "registry.json").read_bytes() == before


# --- A real tracking server killed in the middle of a promotion ---------------------------------


def start_server(root: Path, port: int) -> MlflowServer:
    """A real tracking server over ``root/server`` on ``port`` (conftest's ``MlflowServer``)."""
    return MlflowServer(root / "server", port).start()


def stop_server(server: MlflowServer) -> None:
    """Kill the server and its web-server children at once (SIGKILL: no clean shutdown)."""
    server.kill()


def champions_have_their_tags(client, name: str) -> None:
    """The registry invariant: one champion at most, and it carries its promotion record."""
    from nnops.registry import CHAMPION, alias_version

    champ = alias_version(client, name, CHAMPION)
    if champ is not None:
        tags = client.get_model_version(name, champ.version).tags
        assert tags.get("nnops.promoted") == "true" and tags.get("nnops.promoted_at"), tags
    holders = [
        v
        for v in client.search_model_versions(f"name = '{name}'")
        if CHAMPION in (client.get_model_version(name, v.version).aliases or [])
    ]
    assert len(holders) <= 1


@pytest.mark.slow
def test_server_killed_midway_through_a_promotion_leaves_the_registry_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import keras
    import mlflow

    from nnops import register as reg
    from nnops.errors import NnopsError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        versions = []
        for _ in range(2):
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, "softmax")])
            with mlflow.start_run() as active:
                info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
            versions.append(rg.register_version(client, NAME, info.model_uri, active.info.run_id))
        metrics = {"test": {"accuracy": 0.95}, "fit": {"verdict": "good fit"}}

        def record(run_id: str, previous: str | None) -> dict[str, str]:
            gates = reg.gate_checks(0.95, "good fit", section("register"))
            return reg.promotion_tags(run_id, metrics, gates, "promoted", True, previous, None)

        rg.promote(client, NAME, "1", record(versions[0].run_id, None))
        champions_have_their_tags(client, NAME)

        # Kill the server for real after the second registry write of version 2's promotion.
        steps: list[str] = []

        def kill_after_two(step: str) -> None:
            steps.append(step)
            if len(steps) == 2:
                stop_server(server)

        tags2 = record(versions[1].run_id, "1")
        with pytest.raises(NnopsError, match=f"promoting {NAME} version 2"):
            rg.promote(client, NAME, "2", tags2, kill_after_two)
        assert len(steps) == 2 and not any(s.startswith("alias") for s in steps)

        server = start_server(tmp_path, port)  # same store, back up
        assert str(rg.alias_version(client, NAME, reg.CHAMPION).version) == "1"
        champions_have_their_tags(client, NAME)
        partial = client.get_model_version(NAME, "2")
        assert "champion" not in (partial.aliases or [])

        # Rerunning the promotion finishes it: version 2 is champion with its full record.
        rg.promote(client, NAME, "2", tags2)
        champ = client.get_model_version_by_alias(NAME, "champion")
        assert str(champ.version) == "2" and tags2.items() <= champ.tags.items()
        champions_have_their_tags(client, NAME)
        assert [h["version"] for h in rg.champion_history(client, NAME)] == ["1", "2"]
    finally:
        mlflow.set_tracking_uri(None)
        stop_server(server)


# --- The real pipeline ------------------------------------------------------------------------


@pytest.mark.slow
def test_dvc_repro_makes_a_champion_and_a_worse_rerun_does_not_replace_it(tmp_path: Path):
    import mlflow

    root = make_project(tmp_path / "repo", {"train": {"epochs": 15}})
    dvc("repro", cwd=root)
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert metrics["fit"]["verdict"] == "good fit", metrics
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert registry["promoted"] is True and registry["version"] == "1"

    shown = dvc("metrics", "show", "--json", cwd=root).stdout
    assert '"verdict": "good fit"' in shown and '"f1_macro"' in shown
    plots = json.loads(dvc("plots", "show", "--json", cwd=root).stdout)
    names = set(plots.get("data", plots))
    assert {
        "Loss per epoch (train vs validation)",
        "Accuracy per epoch (train vs validation)",
        "Test confusion matrix",
    } <= names
    assert not plots.get("errors"), plots.get("errors")

    info = json.loads((root / "models" / "run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    logged = client.get_run(info["run_id"])
    assert logged.data.tags["fit"] == "good fit"
    assert logged.data.tags["registry.promoted"] == "true"
    assert logged.data.metrics["test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    pngs = {Path(a.path).name for a in client.list_artifacts(info["run_id"], "evaluation")}
    assert {"loss.png", "accuracy.png", "confusion_test.png"} <= pngs
    assert client.search_runs([info["experiment_id"]], "tags.fit = 'good fit'")

    # Commit the first run so that `dvc metrics diff` compares against it.
    run(["git", "add", "-A"], cwd=root)
    run(["git", "commit", "-qm", "first model"], cwd=root)

    # A worse model: one epoch of a tiny network. The gate stops it; the champion stays.
    set_params(
        root,
        {
            "train": {
                "epochs": 1,
                "hidden_layers": [{"units": 4, "activation": "relu", "dropout": 0.0}],
            }
        },
    )
    dvc("repro", cwd=root)
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert registry["promoted"] is False and registry["version"] == "2", registry
    assert registry["alias"] == "challenger"
    assert {"min_test_accuracy", "require_good_fit", "not_worse_than_champion"} == set(
        registry["failed_gates"]
    )
    champion = client.get_model_version_by_alias("nnops-mlp", "champion")
    assert str(champion.version) == "1" and champion.tags["nnops.run_id"] == info["run_id"]
    assert json.loads((root / "reports" / "metrics.json").read_text())["fit"]["verdict"] == (
        "underfitting"
    )
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=root).stdout)
    test_acc = diff["reports/metrics.json"]["test.accuracy"]
    assert test_acc["new"] < test_acc["old"] == pytest.approx(metrics["test"]["accuracy"])
