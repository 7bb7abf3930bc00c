"""nnops promote: a person moves @champion, through the same record the gate keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnops import registry as rg
from nnops.promote import MANUAL_TAG, main

pytestmark = pytest.mark.unit


@pytest.fixture
def registry(tmp_path: Path, mlflow_store: str):
    """Three versions of "m" in a real sqlite store; version 1 is @champion."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_store)
    exp = client.create_experiment("p", artifact_location=(tmp_path / "art").as_uri())
    client.create_registered_model("m")
    for _ in range(3):
        run = client.create_run(exp)
        client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("m", "champion", "1")
    return client, mlflow_store


def test_promote_by_hand_records_why_then_moves_the_alias(registry, capsys):
    client, uri = registry
    client.set_model_version_tag("m", "3", "nnops.reason", "not promoted: the gate's own words")
    args = ["--model-name", "m", "--tracking-uri", uri]
    assert main(["3", "--reason", "too few unseen test rows; checked by hand", *args]) == 0
    assert "m version 3 is now @champion (was version 1)" in capsys.readouterr().out
    assert str(rg.alias_version(client, "m", "champion").version) == "3"
    tags = client.get_model_version("m", "3").tags
    assert tags["nnops.reason"].endswith(": too few unseen test rows; checked by hand")
    assert tags["nnops.reason"].startswith("promoted by hand by ") and tags[MANUAL_TAG]
    assert tags["nnops.previous_champion"] == "1" and tags["nnops.decision"] == "promoted"
    assert tags["nnops.gate_reason"] == "not promoted: the gate's own words"  # kept beside it
    assert [h["version"] for h in rg.champion_history(client, "m")] == ["3"]
    # Again: nothing changes.
    assert main(["3", "--reason", "again", *args]) == 0
    assert "already @champion; nothing changed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["9", "--reason", "x"], "'m' has no version 9 in this store"),
        (["2", "--reason", "  "], "--reason is empty"),
    ],
)
def test_promote_refuses_what_it_cannot_record(registry, capsys, argv, message):
    client, uri = registry
    assert main([*argv, "--model-name", "m", "--tracking-uri", uri]) == 2
    assert message in capsys.readouterr().err
    assert str(rg.alias_version(client, "m", "champion").version) == "1"


def test_promote_names_a_missing_store(tmp_path: Path, capsys):
    uri = f"sqlite:///{tmp_path / 'nowhere.db'}"
    assert main(["1", "--reason", "x", "--model-name", "m", "--tracking-uri", uri]) == 2
    assert "no MLflow store there" in capsys.readouterr().err
    assert not (tmp_path / "nowhere.db").exists()


def test_promote_fails_fast_on_an_unreachable_server(tmp_path: Path, capsys, monkeypatch):
    from conftest import free_port

    monkeypatch.chdir(tmp_path)  # no params.yaml: the default 10 s connect timeout
    uri = f"http://127.0.0.1:{free_port()}"
    assert main(["1", "--reason", "x", "--model-name", "m", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnops promote: error: ") and uri in err and "Traceback" not in err
