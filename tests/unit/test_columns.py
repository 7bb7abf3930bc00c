"""A model's input columns travel with it: predict and the register gate read them by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import section
from nnops import register as reg
from nnops import registry as rg
from nnops.predict import main

pytestmark = pytest.mark.unit

P = section("register", model_name="cols", min_test_accuracy=0.0, require_good_fit=False)
METRICS = {"test": {"accuracy": 0.9}, "fit": {"verdict": "good fit"}}


def task(names: list[str]) -> dict:
    return rg.task_of({"n_features": len(names), "feature_names": names, "class_names": ["0", "1"]})


@pytest.fixture
def two_versions(tmp_path: Path, mlflow_store: str):
    """Two registered versions of a model that predicts class 0 exactly when column ``a`` > 0,
    logged with their input columns in MLmodel metadata as the train stage logs them."""
    import keras
    import mlflow

    mlflow.set_tracking_uri(mlflow_store)
    client = mlflow.MlflowClient(mlflow_store)
    exp = client.create_experiment("c", artifact_location=(tmp_path / "art").as_uri())
    versions = []
    for names in (["a", "b"], ["b", "a"]):  # the second trained on the columns reversed
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
        weights = [[10.0, -10.0], [0.0, 0.0]] if names[0] == "a" else [[0.0, 0.0], [10.0, -10.0]]
        model.layers[-1].set_weights([np.array(weights), np.zeros(2)])
        with mlflow.start_run(experiment_id=exp) as run:
            info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"],
                                          metadata={"feature_names": names,
                                                    "class_names": ["0", "1"]})  # fmt: skip
        versions.append(rg.register_version(client, "cols", info.model_uri, run.info.run_id))
    yield client, versions
    mlflow.set_tracking_uri(None)


def rows(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 2)).astype(np.float32)  # columns a, b
    return x, (x[:, 0] <= 0).astype(np.int64)


def test_reordered_columns_are_the_same_task_and_the_champion_is_scored_in_its_order(
    two_versions,
):
    client, (v1, v2) = two_versions
    x, y = rows()
    first = reg.decide(client, reg.Candidate("cols", "1", v1.run_id, METRICS, (x, y),
                                             ["0", "1"], task(["a", "b"])), P)  # fmt: skip
    assert first["promoted"]
    # The same data with its columns reversed (and other rows, so the champion is rescored).
    x2, y2 = rows(50)
    cand = reg.Candidate("cols", "2", v2.run_id, METRICS, (x2[:, ::-1].copy(), y2), ["0", "1"],
                         task(["b", "a"]))  # fmt: skip
    second = reg.decide(client, cand, P)
    assert second["new_lineage"] is None, second["new_lineage"]
    # Scored on the columns put back in its own order, the champion is right on every row; fed
    # the reversed columns as they are, it would be right on about half.
    assert second["champion_accuracy"] == 1.0
    gate = next(g for g in second["gates"] if g["name"] == "not_worse_than_champion")
    assert gate["threshold"] == pytest.approx(1.0 - P.max_regression)
    tags = client.get_model_version("cols", "2").tags
    assert tags[rg.COLUMNS_TAG] == rg.column_signature(task(["a", "b"]))
    assert tags[rg.TASK_TAG] != rg.task_signature(task(["a", "b"]))  # the ordered digest differs


def test_predict_reads_a_batch_by_the_columns_the_model_recorded(
    two_versions, tmp_path: Path, mlflow_store: str
):
    _, (v1, v2) = two_versions
    x, y = rows()
    batch = pd.DataFrame({"b": x[:, 1], "a": x[:, 0]})  # header order: b, a
    batch.to_csv(tmp_path / "batch.csv", index=False)
    for version in ("1", "2"):  # v1 takes (a, b), v2 (b, a): both read the right columns
        out = tmp_path / f"p{version}.csv"
        args = ["--model", f"models:/cols/{version}", "--tracking-uri", mlflow_store]
        assert main([*args, "--input", str(tmp_path / "batch.csv"), "--out", str(out)]) == 0
        assert pd.read_csv(out, dtype={"predicted": str})["predicted"].tolist() == [
            str(c) for c in y
        ]
