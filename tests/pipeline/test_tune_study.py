"""``nnops tune`` in a real project: the CLI, the study database, MLflow and ``dvc exp run``.

One project reproduced up to ``data/processed`` is shared; each test works on a copy, with few
epochs and few trials.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, dvc, make_project, project_env, run, set_params

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

PARAMS = {
    "train": {"epochs": 2},
    "explain": {"samples": 10},
    "register": {"min_test_accuracy": 0.5, "require_good_fit": False},
    "tune": {"startup_trials": 2, "heartbeat_s": 2, "stale_after_s": 5},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("tune") / "repo", PARAMS)
    dvc("repro", "preprocess", cwd=root)
    env = project_env()
    run(["git", "add", "-A"], cwd=root, env=env)
    run(["git", "commit", "-qm", "data stages"], cwd=root, env=env)
    return root


@pytest.fixture
def project(prepared: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(prepared, dest, symlinks=True)
    return dest


def tune(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "nnops"), "tune", *args], cwd=root, check=check)


def _study(root: Path, name: str = "nnops-tune"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def _runs(root: Path, query: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nnops").experiment_id
    return list(client.search_runs([exp], query, max_results=1000))


def test_a_study_makes_one_parent_and_a_child_per_trial_without_the_test_split(project: Path):
    # Trials train on train.npz and score on val.npz: without test.npz tuning still works.
    (project / "data/processed/test.npz").unlink()
    proc = tune(project, "--trials", "3", "--jobs", "2")
    assert not (project / "data/processed/test.npz").exists()

    study = _study(project)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # two processes shared the study through its database
    parents = _runs(project, "tags.`nnops.kind` = 'tune-study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["tune.metric"] == "val_loss"
    assert parent.data.metrics["trials_complete"] == 3
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    children = _runs(project, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["nnops.trial.state"] == "complete"
        number = int(child.data.tags["nnops.trial.number"])
        assert child.data.metrics["objective"] == pytest.approx(study.trials[number].value)
        lr = study.trials[number].params["train.learning_rate"]
        assert float(child.data.params["train.learning_rate"]) == pytest.approx(lr)
        assert "train.hidden_layers.0.units" in child.data.params

    best = json.loads((project / "reports/tune/best_params.json").read_text())
    assert best["best_trial"] == study.best_trial.number
    assert best["parent_run_id"] == parent.info.run_id
    assert best["command"] in proc.stdout and best["command"].startswith("dvc exp run -S ")
    for name in ("optimization_history.png", "param_importances.png"):
        assert (project / "reports/tune" / name).read_bytes()[:4] == b"\x89PNG"
    assert {a.path for a in _artifacts(project, parent.info.run_id)} >= {
        "tune/optimization_history.png",
        "tune/best_params.json",
    }


def _artifacts(root: Path, run_id: str) -> list:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}").list_artifacts(run_id, "tune")


def test_a_killed_study_resumes_and_its_dead_trial_is_closed(project: Path):
    set_params(project, {"train": {"epochs": 4}})
    with open(project / "tune.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "nnops"), "tune", "--trials", "50"], cwd=project, env=project_env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (project / "tune.log").read_text()[-3000:]
            trials = _study(project).trials if _has_db(project) else []
            states = [t.state.name for t in trials]
            # a running trial that already has its MLflow run (set a moment after it starts)
            if (
                "COMPLETE" in states
                and states[-1] == "RUNNING"
                and ("mlflow_run_id" in trials[-1].user_attrs)
            ):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = _study(project).trials
    assert killed[-1].state.name == "RUNNING"  # a trial the kill left behind

    tune(project, "--trials", "1")
    trials = _study(project).trials
    assert len(trials) == len(killed) + 1  # the same study went on
    assert trials[len(killed) - 1].state.name == "FAIL"
    assert trials[-1].state.name == "COMPLETE"
    dead_run = killed[-1].user_attrs["mlflow_run_id"]
    (run_,) = [r for r in _runs(project, "") if r.info.run_id == dead_run]
    assert run_.info.status == "KILLED" and run_.data.tags["nnops.trial.state"] == "failed"
    assert _runs(project, "attributes.status = 'RUNNING'") == []
    assert len(_runs(project, "tags.`nnops.kind` = 'tune-study'")) == 1  # one parent per study


def _has_db(root: Path) -> bool:
    if not (root / "optuna.db").exists():
        return False
    try:
        _study(root)
    except Exception:  # the study is not created yet
        return False
    return True


def test_apply_trains_the_winner_through_the_pipeline_and_links_the_study(project: Path):
    proc = tune(project, "--trials", "2", "--apply")
    assert "Running stage 'train'" in proc.stdout + proc.stderr
    best = json.loads((project / "reports/tune/best_params.json").read_text())
    info = json.loads((project / "models/run.json").read_text())
    (pipeline_run,) = [r for r in _runs(project, "") if r.info.run_id == info["run_id"]]
    assert pipeline_run.data.tags["nnops.tune.parent_run_id"] == best["parent_run_id"]
    assert pipeline_run.data.tags["nnops.tune.study"] == "nnops-tune"
    # The pipeline trained exactly the winning trial: same params, same validation loss.
    lr = best["params"]["train.learning_rate"]
    assert float(pipeline_run.data.params["train.learning_rate"]) == pytest.approx(lr)
    assert pipeline_run.data.metrics["val_loss"] == pytest.approx(best["best_value"], rel=1e-5)
    assert json.loads((project / "reports/metrics.json").read_text())["test"]["accuracy"] > 0
    html = (project / "reports/report.html").read_text()
    assert "Chosen by Optuna study <b>nnops-tune</b>" in html
    assert 'alt="optimization history"' in html


def test_bad_input_is_one_line_and_exit_2(project: Path):
    proc = tune(project, "--trials", "0", check=False)
    assert proc.returncode == 2
    assert "tune.trials" in proc.stderr and "Traceback" not in proc.stderr
    set_params(project, {"tune": {"metric": "val_accuracy"}})
    tune(project, "--trials", "1", "--study", "s1")
    set_params(project, {"tune": {"metric": "val_loss"}})
    proc = tune(project, "--trials", "1", "--study", "s1", check=False)
    assert (
        proc.returncode == 2
        and "study 's1'" in proc.stderr
        and "optimises val_accuracy" in proc.stderr
    )


def _wine_csv(path: Path) -> None:
    """scikit-learn's bundled wine as a user's CSV (13 columns, class names as labels)."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    table = bunch.frame.copy()
    table["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


def test_a_study_refuses_to_go_on_after_the_data_switched_to_another_dataset(project: Path):
    tune(project, "--trials", "2")
    before = _study(project)
    assert {t.user_attrs["data_hash"] for t in before.trials} == {before.user_attrs["data"]["hash"]}
    # The user points data.path at another dataset and reruns the data stages, as the tester did.
    _wine_csv(project / "inputs/wine.csv")
    set_params(project, {"data": {"source": "csv", "path": "inputs/wine.csv",
                                  "label_column": "target"}})  # fmt: skip
    # before preprocess reran, data/processed still holds digits: tuning it would be stale
    stale = tune(project, "--trials", "1", check=False)
    assert stale.returncode == 2 and "Traceback" not in stale.stderr
    assert "nnops tune: error: data/processed is out of date: `dvc status` names ingest" in (
        stale.stderr
    )
    assert "run `dvc repro preprocess` first" in stale.stderr
    assert len(_study(project).trials) == len(before.trials)
    dvc("repro", "preprocess", cwd=project)

    proc = tune(project, "--trials", "1", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert error.startswith("nnops tune: error: study 'nnops-tune' (tune.study) in sqlite:///")
    assert (
        "was run on other data than data/processed holds now (source 'digits' -> 'csv', " in error
    )
    assert "feature columns 64 (px_0, px_1, px_2, px_3, ...) -> 13 (alcohol, " in error
    assert "classes 10 (0, 1, 2, 3, ...) -> 3 (class_0, class_1, class_2)" in error
    assert "--study NAME, or tune.study in params.yaml" in error and "delete-study" in error
    assert "best trial" not in proc.stdout  # nothing reported, nothing to apply
    assert len(_study(project).trials) == len(before.trials)  # no trial ran against them
    assert len(_runs(project, "tags.`nnops.kind` = 'tune-study'")) == 1
    assert _runs(project, "attributes.status = 'RUNNING'") == []

    proc = tune(project, "--trials", "1", "--study", "wine")  # a new study tunes the new data
    wine = _study(project, "wine")
    assert "best trial 0:" in proc.stdout and wine.user_attrs["data"]["classes"] == [
        "class_0", "class_1", "class_2"
    ]  # fmt: skip
    assert wine.user_attrs["data"]["hash"] != before.user_attrs["data"]["hash"]
    best = json.loads((project / "reports/tune/best_params.json").read_text())
    assert best["study"] == "wine" and best["data_hash"] == wine.user_attrs["data"]["hash"]
