"""Team mode's pure pieces: secrets on disk, auth error messages, the UI's training default."""

from __future__ import annotations

import configparser
import json
import stat
import subprocess
from pathlib import Path

import pytest

from nnops import team
from nnops.tracking import _without_userinfo, auth_failure

pytestmark = pytest.mark.unit


def test_auth_config_is_private_and_keeps_its_password(tmp_path: Path) -> None:
    dirs = team.TeamDirs(tmp_path)
    first = team.auth_config(dirs, "postgresql+psycopg://u:p@127.0.0.1:1/mlflow_auth")
    password = first["mlflow"]["admin_password"]
    assert len(password) >= 24 and password != "password1234"
    assert stat.S_IMODE(dirs.auth_ini.stat().st_mode) == 0o600
    second = team.auth_config(dirs, "postgresql+psycopg://u:p@127.0.0.1:2/mlflow_auth")
    assert second["mlflow"]["admin_password"] == password  # MLflow created the admin with it
    on_disk = configparser.ConfigParser(interpolation=None)
    on_disk.read(dirs.auth_ini)
    assert on_disk["mlflow"]["database_uri"].endswith(":2/mlflow_auth")
    assert on_disk["mlflow"]["default_permission"] == "EDIT"
    assert on_disk["mlflow"]["auth_cache_ttl_seconds"] == str(team.AUTH_CACHE_TTL_S)


def test_env_file_is_written_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "team.env"
    path.write_text("old")
    path.chmod(0o644)
    team.write_private(path, team.env_file_text("http://127.0.0.1:5000", "admin", "s3cret"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "export MLFLOW_TRACKING_PASSWORD=s3cret" in path.read_text()


def test_server_command_carries_no_secret() -> None:
    cmd = team.server_command("127.0.0.1", 5000, "file:///srv/artifacts", 2)
    assert cmd[cmd.index("--app-name") + 1] == "nnops-auth"
    assert not any("postgresql" in part or "password" in part for part in cmd)


def test_a_401_names_the_uri_and_user_not_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    exc = MlflowException("failed with error code 401 != 200", error_code=UNAUTHENTICATED)
    message = auth_failure("http://127.0.0.1:5000", exc)
    assert message is not None
    assert "http://127.0.0.1:5000" in message and "'alice'" in message and "401" in message
    assert "hunter2" not in message
    denied = MlflowException("error code 403 != 200", error_code=PERMISSION_DENIED)
    assert "403" in auth_failure("http://h:1", denied)
    assert auth_failure("http://h:1", MlflowException("boom")) is None


def test_credentials_in_a_uri_are_not_repeated() -> None:
    assert _without_userinfo("http://bob:pw@host:5000/x") == "http://host:5000/x"
    assert _without_userinfo("http://host:5000") == "http://host:5000"


def test_ui_index_sets_model_training_for_new_browsers(tmp_path: Path) -> None:
    from flask import Flask

    from nnops.mlflow_app import TRAINING_DEFAULT, WORKFLOW_KEY, open_on_training

    (tmp_path / "index.html").write_text("<html><head><title>x</title></head></html>")
    app = Flask("probe", static_folder=str(tmp_path))
    app.add_url_rule("/", "serve", lambda: "original")
    open_on_training(app, columns=lambda: {})
    body = app.test_client().get("/").get_data(as_text=True)
    assert body.startswith("<html><head>" + TRAINING_DEFAULT + "<title>")
    assert f"localStorage.getItem('{WORKFLOW_KEY}')" in TRAINING_DEFAULT
    assert "machine_learning" in TRAINING_DEFAULT


def _run(params: dict[str, str], metrics: dict[str, float], tags: dict[str, str]):
    from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

    info = RunInfo("r", "1", "u", "FINISHED", 0, 1, "active")
    data = RunData(
        [Metric(k, v, 0, 0) for k, v in metrics.items()],
        [Param(k, v) for k, v in params.items()],
        [RunTag(k, v) for k, v in tags.items()],
    )
    return Run(info, data)


def test_ui_key_columns_are_metric_varying_params_and_fit_tag() -> None:
    from nnops.mlflow_app import UI_DEFAULT_COLUMNS, key_columns

    small = _run({"train.learning_rate": "0.001", "train.epochs": "2", "seed": "1"},
                 {"test.accuracy": 0.9}, {"fit": "good"})  # fmt: skip
    large = _run({"train.learning_rate": "0.01", "train.epochs": "2", "seed": "1", "x": "1"},
                 {"test.accuracy": 0.8}, {"fit": "overfit"})  # fmt: skip
    assert key_columns([small, large]) == [
        *UI_DEFAULT_COLUMNS,
        "metrics.`test.accuracy`",
        "params.`train.learning_rate`",
        "params.`x`",
        "tags.`fit`",
    ]
    # One run: nothing varies, so the training params a user tunes first.
    assert key_columns([small])[3:] == [
        "metrics.`test.accuracy`",
        "params.`train.learning_rate`",
        "params.`train.epochs`",
        "tags.`fit`",
    ]
    assert key_columns([]) == []


def test_ui_column_script_seeds_only_experiments_without_state(tmp_path: Path) -> None:
    """Run the injected script in node against a local-storage stand-in holding one choice."""
    import shutil

    from nnops.mlflow_app import STATE_KEY, column_script

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    assert column_script({"1": []}) == ""
    script = column_script({"1": ["metrics.`a</script>`"], "2": ["tags.`fit`"]})
    assert script.count("</script>") == 1
    mine = STATE_KEY.format(ids='["2"]')
    js = (
        "const m = new Map([[" + json.dumps(mine) + ", '{\"selectedColumns\":[]}']]);"
        "globalThis.localStorage = {getItem: k => m.has(k) ? m.get(k) : null,"
        " setItem: (k, v) => m.set(k, v)};"
        + script.removeprefix("<script>").removesuffix("</script>")
        + ";console.log(JSON.stringify(Object.fromEntries(m)));"
    )
    (tmp_path / "seed.js").write_text(js)
    out = json.loads(subprocess.run([node, str(tmp_path / "seed.js")], capture_output=True,
                                    text=True, check=True).stdout)  # fmt: skip
    assert json.loads(out[STATE_KEY.format(ids='["1"]')]) == {
        "selectedColumns": ["metrics.`a</script>`"]
    }
    assert out[mine] == '{"selectedColumns":[]}'  # the user's own choice stays
