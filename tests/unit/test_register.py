"""The promotion gate and decision record (pure), and the registry edge on a real sqlite store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import section
from nnops import register as reg
from nnops import registry as rg

pytestmark = pytest.mark.unit

P = section(
    "register",
    model_name="m",
    min_test_accuracy=0.9,
    require_good_fit=True,
    compare_to_champion=True,
    max_regression=0.01,
    min_unseen_test_rows=30,
    challenger_alias=True,
)


def by_name(gates):
    return {g.name: g for g in gates}


def test_first_model_passing_absolute_bounds_is_promoted():
    gates = reg.gate_checks(0.95, "good fit", P, champion=None)
    assert [g.name for g in gates] == ["min_test_accuracy", "require_good_fit"]
    assert all(g.passed for g in gates)
    assert by_name(gates)["min_test_accuracy"].margin == pytest.approx(0.05)
    reason = reg.decision_reason(gates, first_model=True)
    assert reason.startswith("promoted:") and "first model" in reason


def test_each_failed_gate_says_by_how_much():
    champion = {"version": "3", "accuracy": 0.97, "candidate_accuracy": 0.93}
    gates = by_name(reg.gate_checks(0.85, "overfitting", P, champion))
    low = gates["min_test_accuracy"]
    assert not low.passed and low.margin == pytest.approx(-0.05)
    assert "short by 0.0500" in low.detail
    fit = gates["require_good_fit"]
    assert not fit.passed and "'overfitting'" in fit.detail
    champ = gates["not_worse_than_champion"]
    assert not champ.passed and champ.threshold == pytest.approx(0.96)
    assert champ.margin == pytest.approx(-0.03) and "worse by 0.0300" in champ.detail
    assert "champion version 3" in champ.detail
    reason = reg.decision_reason(list(gates.values()), first_model=False)
    assert reason.startswith("not promoted:") and reason.count("failed") == 3


def test_allowed_regression_lets_a_slightly_worse_model_through():
    champion = {"version": "1", "accuracy": 0.95, "candidate_accuracy": 0.945}
    gate = by_name(reg.gate_checks(0.945, "good fit", P, champion))["not_worse_than_champion"]
    assert gate.passed and gate.margin == pytest.approx(0.005)


def test_switches_drop_gates():
    p = P.model_copy(update={"require_good_fit": False, "compare_to_champion": False})
    champion = {"version": "1", "accuracy": 1.0, "candidate_accuracy": 0.0}
    gates = reg.gate_checks(0.95, "underfitting", p, champion)
    assert [g.name for g in gates] == ["min_test_accuracy"]


def test_promotion_tags_record_metrics_run_reason_and_time():
    metrics = {"test": {"accuracy": 0.9512346, "loss": 0.2}, "fit": {"verdict": "good fit"}}
    gates = reg.gate_checks(0.9512346, "good fit", P)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    tags = reg.promotion_tags("r1", metrics, gates, "promoted: ok", True, "4", ["a", "b"], when)
    assert (
        tags["nnops.promoted"] == "true"
        and tags["nnops.promoted_at"] == "2026-01-02T03:04:05+00:00"
    )
    assert tags["nnops.test.accuracy"] == "0.951235" and tags["nnops.run_id"] == "r1"
    assert tags["nnops.previous_champion"] == "4" and tags["nnops.fit"] == "good fit"
    assert json.loads(tags["nnops.class_names"]) == ["a", "b"]
    assert [g["name"] for g in json.loads(tags["nnops.gates"])] == [
        "min_test_accuracy",
        "require_good_fit",
    ]
    assert all(isinstance(v, str) for v in tags.values())
    rejected = reg.promotion_tags("r1", metrics, gates, "no", False, None, None, when)
    assert rejected["nnops.promoted"] == "false" and "nnops.promoted_at" not in rejected


@pytest.fixture
def registry(tmp_path: Path, mlflow_store: str):
    """A real sqlite MLflow store holding two registered versions of a tiny Keras model."""
    import keras
    import mlflow

    uri = mlflow_store
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    versions = []
    for bias in (0.0, 5.0):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
        model.layers[-1].set_weights([np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.0, bias])])
        with mlflow.start_run(experiment_id=exp) as run:
            info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"])
        versions.append(rg.register_version(client, "m", info.model_uri, run.info.run_id))
    yield client, versions
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_registry_edge_promotes_records_history_and_reuses_versions(registry):
    client, (v1, v2) = registry
    assert (str(v1.version), str(v2.version)) == ("1", "2")
    assert rg.alias_version(client, "m", reg.CHAMPION) is None
    again = rg.register_version(client, "m", v1.source, v1.run_id)
    assert str(again.version) == "1"  # the same run's model is not registered twice

    steps: list[str] = []
    rg.record_rejection(client, "m", "1", {"nnops.promoted": "false"}, True, steps.append)
    assert steps == ["tag nnops.promoted", "alias challenger"]
    assert str(rg.alias_version(client, "m", reg.CHALLENGER).version) == "1"

    steps.clear()
    tags = {"nnops.promoted": "true", "nnops.promoted_at": "2026-01-01T00:00:00+00:00"}
    rg.promote(client, "m", "1", tags, steps.append)
    assert steps[-1] == "alias champion" and steps[:-1] == [f"tag {k}" for k in tags]
    assert rg.alias_version(client, "m", reg.CHALLENGER) is None  # moved up, no longer challenger
    rg.promote(client, "m", "2", {**tags, "nnops.promoted_at": "2026-01-02T00:00:00+00:00"})
    assert str(rg.alias_version(client, "m", reg.CHAMPION).version) == "2"
    history = rg.champion_history(client, "m")
    assert [h["version"] for h in history] == ["1", "2"]
    assert history[1]["aliases"] == "champion" and history[0]["aliases"] == ""

    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    y = np.array([0, 1, 0])
    assert rg.score_model("models:/m/1", x, y) == 1.0
    assert rg.score_model("models:/m@champion", x, y) == pytest.approx(1 / 3)  # bias favours 1


QUOTED = "bob's model"
METRICS = {"test": {"accuracy": 0.95}, "fit": {"verdict": "good fit"}}


@pytest.fixture
def quoted_registry(tmp_path: Path, mlflow_store: str):
    """A real sqlite store; two tiny models (2 inputs) registered under a name with a quote."""
    import keras
    import mlflow

    uri = mlflow_store
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    versions = []
    for _ in range(2):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
        with mlflow.start_run(experiment_id=exp) as run:
            info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"],
                                          metadata={"feature_names": ["f0", "f1"]})  # fmt: skip
        versions.append(rg.register_version(client, QUOTED, info.model_uri, run.info.run_id))
    yield client, versions
    mlflow.set_tracking_uri(None)


def task(n: int, classes: list[str]) -> dict:
    return reg.task_of({"n_features": n, "feature_names": [f"f{i}" for i in range(n)],
                        "class_names": classes})  # fmt: skip


def test_task_signature_follows_inputs_and_labels():
    a = reg.task_signature(task(2, ["x", "y"]))
    assert a == reg.task_signature(task(2, ["x", "y"]))
    assert a != reg.task_signature(task(3, ["x", "y"]))
    assert a != reg.task_signature(task(2, ["x", "z"]))
    assert (
        reg.describe_task(task(4, ["a", "b", "c"]))
        == "4 features (f0, f1, f2, ...), 3 classes (a, b, c)"
    )


@pytest.mark.parametrize(("value", "quoted"), [("m", "'m'"), ("bob's", '"bob\'s"')])
def test_filter_values_are_quoted(value: str, quoted: str):
    assert rg.quote_filter(value) == quoted
    with pytest.raises(Exception, match="both quote characters"):
        rg.quote_filter("""a'b"c""")


@pytest.mark.slow
def test_a_champion_of_another_task_is_not_scored_and_a_new_lineage_starts(quoted_registry):
    client, (v1, v2) = quoted_registry
    assert rg.version_for_run(client, QUOTED, v1.run_id, v1.source).version == v1.version
    x2, y2 = np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=int)
    cand = reg.Candidate(QUOTED, "1", v1.run_id, METRICS, (x2, y2), ["x", "y"], task(2, ["x", "y"]))
    first = reg.decide(client, cand, P)
    assert first["promoted"] and first["new_lineage"] is None
    # as `nnops promote 1 --reason rollback` leaves it
    client.set_model_version_tag(QUOTED, "1", "nnops.promoted_by_hand", "ana")
    client.set_model_version_tag(QUOTED, "1", "nnops.reason", "promoted by hand by ana: rollback")
    # The candidate takes 3 features: scoring the 2-input champion on its test rows would raise.
    x3, y = np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=int)
    cand = reg.Candidate(QUOTED, "2", v2.run_id, METRICS, (x3, y), ["a", "b", "c"],
                         task(3, ["a", "b", "c"]))  # fmt: skip
    second = reg.decide(client, cand, P)
    assert second["new_lineage"].startswith("champion version 1 was trained on another task")
    # what differs, not two descriptions that start alike; and that a hand-made champion goes
    assert (
        "columns only the champion takes: none; only this model takes: f2; classes x, y -> "
        in (second["new_lineage"])
    )
    assert second["new_lineage"].endswith(
        "; note: version 1 is @champion by hand (promoted by hand by ana: rollback), and a model "
        "that passes the gate replaces it"
    )
    assert "register.model_name" in second["reason"] and second["champion_accuracy"] is None
    assert "not_worse_than_champion" not in [g["name"] for g in second["gates"]]
    tags = client.get_model_version(QUOTED, "2").tags
    assert tags["nnops.decision"] == "promoted" and tags["nnops.task"] == reg.task_signature(
        task(3, ["a", "b", "c"])
    )
    assert [h["version"] for h in rg.champion_history(client, QUOTED)] == ["1", "2"]


@pytest.mark.slow
def test_a_gate_that_cannot_finish_marks_the_version_failed(quoted_registry):
    client, (v1, _) = quoted_registry
    with pytest.raises(Exception, match="no numeric test.accuracy"):
        x2, y2 = np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=int)
        cand = reg.Candidate(
            QUOTED, "1", v1.run_id, {"fit": {}}, (x2, y2), None, task(2, ["x", "y"])
        )
        reg.decide(client, cand, P)
    tags = client.get_model_version(QUOTED, "1").tags
    assert tags["nnops.decision"] == "failed" and "test.accuracy" in tags["nnops.error"]
    assert rg.alias_version(client, QUOTED, reg.CHAMPION) is None


@pytest.mark.slow
def test_the_champion_score_on_the_same_test_data_is_reused_and_other_data_rescores(
    quoted_registry, caplog
):
    client, (v1, v2) = quoted_registry
    # 32 rows (a comparison needs register.min_unseen_test_rows=30): 0.95 is no multiple of
    # 1/32, so it cannot come from scoring them; seeing it back proves the recorded tag was used.
    rows = np.tile(np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]], np.float32), (8, 1))
    rows += np.arange(32, dtype=np.float32)[:, None] / 64  # distinct rows
    test = (rows, np.tile(np.array([0, 1, 0, 1]), 8))
    first = reg.decide(client, reg.Candidate(QUOTED, "1", v1.run_id, METRICS, test), P)
    assert first["promoted"]
    tags = client.get_model_version(QUOTED, "1").tags
    assert tags["nnops.test_data_hash"] == reg.test_data_hash(*test)
    assert float(tags["nnops.test_accuracy"]) == 0.95

    better = {"test": {"accuracy": 0.97}, "fit": {"verdict": "good fit"}}
    with caplog.at_level("INFO", logger="nnops.register"):
        same = reg.decide(client, reg.Candidate(QUOTED, "2", v2.run_id, better, test), P)
    assert same["champion_accuracy"] == 0.95 and same["promoted"]
    assert "recorded at its registration" in caplog.text and "scoring champion" not in caplog.text

    # Other test data (one label changed): the champion (now version 2) is loaded and scored.
    other = (rows, np.tile(np.array([0, 1, 1, 1]), 8))
    assert reg.test_data_hash(*other) != reg.test_data_hash(*test)
    caplog.clear()
    with caplog.at_level("INFO", logger="nnops.register"):
        again = reg.decide(client, reg.Candidate(QUOTED, "1", v1.run_id, METRICS, other), P)
    assert "scoring champion version 2" in caplog.text
    assert again["champion_accuracy"] == rg.score_model(f"models:/{QUOTED}/2", *other)
    assert again["champion_accuracy"] * 32 == round(again["champion_accuracy"] * 32)


def test_row_digests_match_rows_across_dtypes_and_find_the_seen_ones():
    from nnops.lineage import row_digests, unseen_mask

    rng = np.random.default_rng(0)
    train = rng.normal(size=(20, 3)).astype(np.float32)
    val = train[:5].copy()  # duplicates of training rows count once
    seen = row_digests(train, val, None)
    assert seen.dtype == np.uint64 and len(seen) == 20 and np.all(np.diff(seen) > 0)
    new = rng.normal(size=(4, 3))
    test = np.vstack([train[[3, 7]].astype(np.float64), new])
    assert unseen_mask(test, seen).tolist() == [False, False, True, True, True, True]
    zero = np.zeros((1, 3))
    assert not unseen_mask(-zero, row_digests(zero))[0]  # -0.0 is 0.0
    assert unseen_mask(train[:1, :2], seen)[0]  # the same values in another width differ
    assert len(unseen_mask(np.zeros((0, 3)), seen)) == 0 and len(row_digests(None)) == 0


@pytest.mark.slow
def test_a_champion_is_compared_only_on_test_rows_it_did_not_train_on(
    quoted_registry, tmp_path: Path, caplog
):
    from nnops.lineage import ARTIFACT_DIR, write_digests

    client, (v1, v2) = quoted_registry
    rng = np.random.default_rng(1)
    trained = rng.normal(size=(60, 2)).astype(np.float32)
    client.log_artifact(v1.run_id, str(write_digests(tmp_path, trained)), ARTIFACT_DIR)
    own = (rng.normal(size=(40, 2)).astype(np.float32), rng.integers(0, 2, 40))
    assert reg.decide(client, reg.Candidate(QUOTED, "1", v1.run_id, METRICS, own), P)["promoted"]

    low = {"test": {"accuracy": 0.0}, "fit": {"verdict": "good fit"}}
    # New test data of which 32 rows were the champion's training rows (the data was
    # reshuffled): 8 unseen rows are too few for a fair comparison, so the gate fails.
    x = np.vstack([trained[:32], rng.normal(size=(8, 2)).astype(np.float32)])
    y = rng.integers(0, 2, 40)
    refused = reg.decide(client, reg.Candidate(QUOTED, "2", v2.run_id, METRICS, (x, y)), P)
    assert not refused["promoted"] and refused["failed_gates"] == ["not_worse_than_champion"]
    gate = by_name([reg.Gate(**g) for g in refused["gates"]])["not_worse_than_champion"]
    assert "champion version 1 trained on 32 of the 40 test rows" in gate.detail
    assert "leaving 8" in gate.detail and "register.min_unseen_test_rows=30" in gate.detail
    assert refused["champion_accuracy"] is None and refused["champion_trained_on_test_rows"] == 32
    assert str(rg.alias_version(client, QUOTED, reg.CHAMPION).version) == "1"

    # No row in common: the champion is scored on all of them (a low score keeps it champion).
    x, y = rng.normal(size=(36, 2)).astype(np.float32), rng.integers(0, 2, 36)
    with caplog.at_level("INFO", logger="nnops.register"):
        clean = reg.decide(client, reg.Candidate(QUOTED, "2", v2.run_id, low, (x, y)), P)
    assert "none of its rows were among" in caplog.text
    assert clean["compared_rows"] == 36 and clean["champion_trained_on_test_rows"] == 0

    # A 4-row test split (split.test_fraction=0.002) none of which the champion saw: both can
    # score 1.0 by chance, and such a champion then blocked every later model. Refused.
    x, y = rng.normal(size=(4, 2)).astype(np.float32), rng.integers(0, 2, 4)
    tiny = reg.decide(client, reg.Candidate(QUOTED, "2", v2.run_id, METRICS, (x, y)), P)
    assert not tiny["promoted"] and tiny["failed_gates"] == ["not_worse_than_champion"]
    gate = by_name([reg.Gate(**g) for g in tiny["gates"]])["not_worse_than_champion"]
    assert "no fair comparison: the test split holds only 4 rows, fewer than " in gate.detail
    assert str(rg.alias_version(client, QUOTED, reg.CHAMPION).version) == "1"

    # 10 seen rows among 45: both models are scored on the 35 others, not the evaluate score.
    x = np.vstack([rng.normal(size=(35, 2)).astype(np.float32), trained[40:50]])
    y = rng.integers(0, 2, 45)
    with caplog.at_level("INFO", logger="nnops.register"):
        fair = reg.decide(client, reg.Candidate(QUOTED, "2", v2.run_id, METRICS, (x, y)), P)
    assert "trained on 10 of the 45 test rows" in caplog.text
    assert fair["compared_rows"] == 35 and fair["champion_trained_on_test_rows"] == 10
    assert fair["champion_accuracy"] == rg.score_model(f"models:/{QUOTED}/1", x[:35], y[:35])
    gate = by_name([reg.Gate(**g) for g in fair["gates"]])["not_worse_than_champion"]
    assert gate.value == rg.score_model(f"models:/{QUOTED}/2", x[:35], y[:35])
    assert "on the 35 test rows the champion did not train on (it trained on 10)" in gate.detail
