"""The shared MLflow store fixture gives each test a fresh, real, independent store."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_mlflow_store_is_a_fresh_real_store_beside_the_test(mlflow_store: str, tmp_path: Path):
    from mlflow import MlflowClient

    assert mlflow_store == f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(mlflow_store)
    (default,) = client.search_experiments()
    assert default.name == "Default"
    assert default.artifact_location == str(tmp_path.resolve() / "mlruns" / "0")
    assert client.search_runs([default.experiment_id]) == []
    assert client.search_registered_models() == []
    exp = client.create_experiment("mine", artifact_location=(tmp_path / "art").as_uri())
    client.create_run(exp)  # the schema is complete: a run can be written


@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_its_own_copy(mlflow_store: str, turn: int):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    assert [e.name for e in client.search_experiments()] == ["Default"]  # nothing from turn 1
    client.create_experiment(f"turn-{turn}")
