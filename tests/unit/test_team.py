"""Team mode's pure pieces: secrets on disk, auth error messages, the UI's training default."""

from __future__ import annotations

import configparser
import stat
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
    open_on_training(app)
    body = app.test_client().get("/").get_data(as_text=True)
    assert body.startswith("<html><head>" + TRAINING_DEFAULT)
    assert f"localStorage.getItem('{WORKFLOW_KEY}')" in TRAINING_DEFAULT
    assert "machine_learning" in TRAINING_DEFAULT
