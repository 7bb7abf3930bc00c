"""Team mode on real infrastructure: PostgreSQL, MLflow's basic-auth server, DVC's queue.

One throwaway PostgreSQL cluster and one authenticated server serve the whole module
(``teamserver.team_server``); each test logs into its own experiment or registered model so
that the counts it asserts are its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from teamserver import TeamServer, team_server  # noqa: F401  (the session fixture)

from conftest import BIN, dvc, make_project, run, set_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST = {
    "train": {"epochs": 2},
    "explain": {"enabled": False},
    "register": {"min_test_accuracy": 0.5, "require_good_fit": False},
}


def _commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=root)
    run(["git", "commit", "-qm", message], cwd=root)


def _runs(client, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} on the server"
    return client.search_runs([found.experiment_id])


@pytest.fixture(scope="module")
def team_project(
    tmp_path_factory: pytest.TempPathFactory,
    team_server: TeamServer,  # noqa: F811
) -> tuple[Path, subprocess.CompletedProcess]:
    """One ``dvc repro`` logged to the team server; returns the project and dvc's output."""
    root = make_project(
        tmp_path_factory.mktemp("team") / "repo", {**FAST, "mlflow": {"experiment": "team"}}
    )
    proc = dvc("repro", cwd=root, env=team_server.env())
    return root, proc


def test_sign_in_is_required_and_credentials_stay_out_of_the_records(
    team_project,
    team_server: TeamServer,  # noqa: F811
) -> None:
    root, proc = team_project
    request = urllib.request.Request(
        f"{team_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    )
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(request, timeout=10)
    assert denied.value.code == 401

    client = team_server.client()
    [tracked] = _runs(client, "team")
    assert tracked.info.status == "FINISHED"
    assert tracked.info.artifact_uri.startswith("mlflow-artifacts:"), tracked.info.artifact_uri
    assert client.list_artifacts(tracked.info.run_id)
    assert any(team_server.dirs.artifacts.rglob("MLmodel")), "no model in the artifact store"
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert client.get_model_version(registry["model_name"], registry["version"]).run_id == (
        tracked.info.run_id
    )
    # The password is nowhere the pipeline writes: params, tags, logs, outputs, the report.
    secret = team_server.password
    recorded = {**tracked.data.params, **tracked.data.tags}
    assert not [k for k, v in recorded.items() if secret in v or secret in k]
    assert secret not in proc.stdout + proc.stderr
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts and "cache" not in path.parts:
            assert secret.encode() not in path.read_bytes(), path

    # A wrong password stops the train stage before training, naming the URI, not the password.
    wrong = "not-the-" + secret[:6]
    env = team_server.env(MLFLOW_TRACKING_PASSWORD=wrong)
    failed = dvc("repro", "-f", "train", cwd=root, env=env, check=False)
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert f"MLflow tracking server at {team_server.url} rejected the password" in out, out[-3000:]
    assert wrong not in out and secret not in out
    assert "Traceback" not in out and "Epoch 1" not in out


def _wait_for_queue(root: Path, timeout_s: float = 1500) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = dvc("queue", "status", cwd=root).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"queue still busy after {timeout_s} s:\n{status}"
        time.sleep(3)


def test_four_queued_experiments_on_two_workers_land_four_complete_runs(
    tmp_path: Path,
    team_server: TeamServer,  # noqa: F811
) -> None:
    params = {**FAST, "train": {"epochs": 1}, "mlflow": {"experiment": "queue"},
              "register": {**FAST["register"], "model_name": "queue-mlp"}}  # fmt: skip
    root = make_project(tmp_path / "repo", params)
    env = team_server.env()
    rates = (1e-3, 2e-3, 5e-3, 1e-2)
    names = {f"lr-{i}": f"train.learning_rate={lr}" for i, lr in enumerate(rates)}
    for name, change in names.items():
        dvc("exp", "run", "--queue", "--name", name, "-S", change, cwd=root, env=env)
    dvc("queue", "start", "--jobs", "2", cwd=root, env=env)
    status = _wait_for_queue(root)
    failed = [name for name in names if f"{name} " in status and "Success" not in
              next(line for line in status.splitlines() if f" {name} " in line)]  # fmt: skip
    logs = [dvc("queue", "logs", name, cwd=root, check=False).stdout[-3000:] for name in failed]
    assert status.count("Success") == 4, status + "\n".join(logs)

    client = team_server.client()
    runs = {r.info.run_name: r for r in _runs(client, "queue")}
    assert set(runs) == set(names), sorted(runs)
    for name, change in names.items():
        found = runs[name]
        assert found.info.status == "FINISHED", name
        assert found.data.params["train.learning_rate"] == change.split("=")[1]
        assert "test.accuracy" in found.data.metrics and "fit" in found.data.tags
        steps = [m.step for m in client.get_metric_history(found.info.run_id, "val_loss")]
        assert steps == [1], (name, steps)
        assert found.outputs.model_outputs, f"{name} logged no model"
    versions = client.search_model_versions("name = 'queue-mlp'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in runs.values())
    _assert_consistent_promotions(client, "queue-mlp")


def _assert_consistent_promotions(client, name: str) -> None:
    """One @champion; promoted versions form one chain, each naming the champion it replaced."""
    from nnops.register import CHAMPION, TAG_PREFIX

    versions = client.search_model_versions(f"name = '{name}'")
    champions = [v.version for v in versions if CHAMPION in client.get_model_version(
        name, v.version).aliases]  # fmt: skip
    assert len(champions) == 1, champions
    promoted = sorted(
        (v for v in versions if v.tags.get(TAG_PREFIX + "promoted") == "true"),
        key=lambda v: (v.tags[TAG_PREFIX + "promoted_at"], int(v.version)),
    )
    assert promoted and promoted[-1].version == champions[0]
    previous = "none"
    for version in promoted:
        assert version.tags[TAG_PREFIX + "previous_champion"] == previous, version.tags
        previous = version.version


def test_two_pipelines_registering_at_once_leave_one_champion(
    team_project,
    tmp_path: Path,
    team_server: TeamServer,  # noqa: F811
) -> None:
    source, _ = team_project
    env = team_server.env()
    roots = []
    for i, seed in enumerate((1, 2)):
        root = tmp_path / f"p{i}"
        shutil.copytree(source, root, symlinks=True)
        set_params(root, {"train": {"seed": seed}, "register": {"model_name": "race-mlp"}})
        dvc("repro", "evaluate", cwd=root, env=env)  # a run of its own, not yet registered
        roots.append(root)
    procs = [
        subprocess.Popen([str(BIN / "dvc"), "repro", "register"], cwd=root, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for root in roots
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    client = team_server.client()
    versions = client.search_model_versions("name = 'race-mlp'")
    assert len(versions) == 2
    records = [json.loads((root / "reports/registry.json").read_text()) for root in roots]
    assert sorted(r["version"] for r in records) == sorted(v.version for v in versions)
    _assert_consistent_promotions(client, "race-mlp")
    # The lease is gone once both are done.
    assert not client.search_registered_models("name = 'race-mlp.register-lease'")


def test_server_killed_mid_training_then_a_rerun_completes(
    team_project,
    tmp_path: Path,
    team_server: TeamServer,  # noqa: F811
) -> None:
    source, _ = team_project
    root = tmp_path / "repo"
    shutil.copytree(source, root, symlinks=True)
    epochs = 40
    set_params(root, {"train": {"epochs": epochs}, "mlflow": {"experiment": "killed"}})
    env = team_server.env()
    client = team_server.client()
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "train"], cwd=root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    run_id = None
    while run_id is None or len(client.get_metric_history(run_id, "val_loss")) < 2:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "training never logged two epochs"
        found = client.get_experiment_by_name("killed")
        if found is not None:
            runs = client.search_runs([found.experiment_id])
            run_id = runs[0].info.run_id if runs else None
        time.sleep(0.2)
    team_server.kill()
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out[-3000:]
    assert f"MLflow tracking store at {team_server.url} failed while logging epoch" in out, out[
        -3000:
    ]
    assert "rerun the stage" in out and "Traceback" not in out

    team_server.restart()
    dvc("repro", cwd=root, env=env)
    [tracked] = _runs(client, "killed")
    assert tracked.info.run_id == run_id, "the rerun continued the interrupted run"
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags.get("nnops.resumed") == "true"
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == list(range(1, epochs + 1)), steps  # no epoch lost or doubled
    assert json.loads((root / "models/run.json").read_text())["run_id"] == run_id


def test_two_training_workers_log_one_run(
    tmp_path: Path,
    team_server: TeamServer,  # noqa: F811
) -> None:
    from test_multiworker import run_two_workers, write_processed

    params = {"train": {"epochs": 2, "distribute": "multi_worker", "steps_per_execution": 16},
              "mlflow": {"experiment": "multiworker"}}  # fmt: skip
    root = make_project(tmp_path / "repo", params)
    write_processed(root / "data/processed")
    results = run_two_workers(root, team_server.env)
    assert [code for code, _ in results] == [0, 0], [out[-3000:] for _, out in results]

    client = team_server.client()
    [tracked] = _runs(client, "multiworker")
    assert tracked.info.status == "FINISHED"
    assert json.loads((root / "w0/run.json").read_text())["run_id"] == tracked.info.run_id
    assert [m.step for m in client.get_metric_history(tracked.info.run_id, "val_loss")] == [1, 2]
    assert tracked.outputs.model_outputs, "the chief logged no model"


def test_two_tuning_workers_share_one_study_in_postgresql(
    tmp_path: Path,
    team_server: TeamServer,  # noqa: F811
) -> None:
    import optuna

    from nnops import postgres

    # The study lives in a database of its own on the fixture's cluster, beside the runs.
    base = team_server.backend_uri.rsplit("/", 1)[0]
    postgres.ensure_databases(base, ("optuna_shared",))
    storage = postgres.db_uri(base, "optuna_shared")
    assert storage.startswith("postgresql+psycopg://")
    db_password = urllib.parse.unquote(urllib.parse.urlsplit(storage).password or "")
    assert db_password
    params = {"train": {"epochs": 2}, "mlflow": {"experiment": "shared-tune"},
              "tune": {"startup_trials": 2, "heartbeat_s": 2, "stale_after_s": 30}}  # fmt: skip
    root = make_project(tmp_path / "repo", params)
    dvc("repro", "preprocess", cwd=root)
    study_name = "shared-pg"
    cmd = [str(BIN / "nnops"), "tune", "--trials", "2", "--jobs", "1",
           "--storage", storage, "--study", study_name]  # fmt: skip
    procs = [
        subprocess.Popen([*cmd, "--out", f"reports/tune-w{i}"], cwd=root, env=team_server.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    try:
        outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outputs]
    for out in outputs:
        assert db_password not in out and team_server.password not in out
        assert "Traceback" not in out

    study = optuna.load_study(study_name=study_name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == [study_name]
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, workers  # both processes ran trials of the one study
    assert {int(w.rsplit(":", 1)[1]) for w in workers} == {p.pid for p in procs}

    client = team_server.client()
    found = client.get_experiment_by_name("shared-tune")
    assert found is not None
    exp = [found.experiment_id]
    parents = client.search_runs(exp, f"tags.`nnops.tune.study` = '{study_name}' "
                                      "and tags.`nnops.kind` = 'tune-study'")  # fmt: skip
    # Started at the same moment, the two workers still share the study's one parent run.
    [parent] = parents
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    children = client.search_runs(exp, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(int(c.data.tags["nnops.trial.number"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["nnops.trial.state"] for c in children} == {"complete"}
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {
        c.info.run_id for c in children
    }
    everything = client.search_runs(exp)
    assert not [r.info.run_id for r in everything if r.info.status != "FINISHED"]
    for run_ in everything:
        logged = {**run_.data.params, **run_.data.tags}
        assert not [k for k, v in logged.items() if db_password in str(v)]
    for i in range(2):
        best = json.loads((root / f"reports/tune-w{i}/best_params.json").read_text())
        assert db_password not in json.dumps(best)
        assert best["parent_run_id"] == parent.info.run_id
        assert best["storage"].startswith("postgresql+psycopg://") and "***" in best["storage"]
