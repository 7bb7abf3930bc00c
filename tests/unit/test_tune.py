"""Tuning: the search space against train params, and trials on tiny in-memory data.

The trials here run the real objective (``tune_trial.run_trial``: ``train.fit``, a real Optuna
study in a sqlite file, a real MLflow sqlite store) on a few hundred synthetic rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import section
from nnops.config import ConfigError, parse_params
from nnops.tune_space import apply, overrides

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _raw(**tune: object) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tune"] = {**raw["tune"], **tune}
    return raw


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    return str(err.value)


def test_repository_space_is_valid_and_flattens_to_dotted_names():
    params = parse_params(_raw())
    assert params.tune is not None and len(params.tune.space) >= 5
    assert params.flat()["tune.space.0.key"] == "train.learning_rate"


@pytest.mark.parametrize(
    ("dim", "expected"),
    [
        (
            {"key": "train.lerning_rate", "type": "float", "low": 0.1, "high": 0.2, "log": False},
            "tune.space.0.key: 'train.lerning_rate' is not a train param; did you mean "
            "'train.learning_rate'?",
        ),
        (
            {"key": "train.learning_rate", "type": "float", "low": 0.1, "high": 20, "log": True},
            "tune.space.0 (train.learning_rate): value 20.0 is not accepted",
        ),
        (
            {"key": "train.batch_size", "type": "categorical", "choices": [0, 32]},
            "tune.space.0 (train.batch_size): value 0 is not accepted",
        ),
        (
            {"key": "train.device", "type": "categorical", "choices": ["cpu"]},
            "cannot vary between trials",
        ),
        (
            {
                "key": "train.hidden_layers.3.units",
                "type": "int",
                "low": 8,
                "high": 9,
                "log": False,
            },
            "layer 3 does not exist (2 layers)",
        ),
        (
            {"key": "train.learning_rate", "type": "float", "low": 0.0, "high": 1, "log": True},
            "a log scale needs low > 0",
        ),
    ],
)
def test_bad_dimensions_name_the_entry_and_value(dim: dict, expected: str):
    assert expected in _error(_raw(space=[dim]))


def test_tune_fields_are_required_and_checked():
    raw = _raw()
    del raw["tune"]["trials"]
    assert "tune.trials: required key is missing" in _error(raw)
    assert "tune.metric: received 'f1'" in _error(_raw(metric="f1"))
    threshold = {"kind": "threshold", "startup_trials": 0, "warmup_epochs": 1,
                 "reduction_factor": 3, "threshold": None}  # fmt: skip
    assert "needs a tune.pruner.threshold" in _error(_raw(pruner=threshold))


def test_apply_sets_layer_count_then_all_layers_then_one():
    base = section("train")
    tuned = apply(
        base,
        {
            "train.hidden_layers.0.dropout": 0.3,
            "train.hidden_layers.*.units": 128,
            "train.hidden_layers": 3,
            "train.learning_rate": 0.01,
        },
    )
    assert [(h.units, h.dropout) for h in tuned.hidden_layers] == [
        (128, 0.3),
        (128, 0.0),
        (128, 0.0),
    ]
    assert tuned.learning_rate == 0.01 and base.learning_rate == 0.001
    sets = overrides(base, tuned)
    assert "train.learning_rate=0.01" in sets
    assert (
        "train.hidden_layers=[{units:128,activation:relu,dropout:0.3},"
        "{units:128,activation:relu,dropout:0.0},{units:128,activation:relu,dropout:0.0}]" in sets
    )
    assert overrides(base, base) == []


def test_split_trials_shares_the_budget():
    from nnops.tune import split_trials

    assert split_trials(7, 3) == [3, 2, 2]
    assert split_trials(2, 4) == [1, 1]


def test_trial_value_follows_the_weights_the_pipeline_keeps():
    from nnops.tune_trial import trial_value

    history = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.3},
               {"epoch": 3, "val_loss": 0.4}]  # fmt: skip
    assert trial_value(history, section("train"), "val_loss") == 0.4
    es = {"enabled": True, "monitor": "val_loss", "patience": 1, "min_delta": 0.0,
          "restore_best_weights": True}  # fmt: skip
    assert trial_value(history, section("train", early_stopping=es), "val_loss") == 0.3


# --- Real trials on tiny data -----------------------------------------------------------------


def _table(name: str = "iris"):
    """A bundled scikit-learn dataset as a user's table: named columns, class names as labels."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    table = bunch.frame.copy()
    table["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return table


def _processed(folder: Path, table) -> Path:
    """Write ``folder`` as the preprocess stage does, from the table as ingest reads it."""
    from nnops import preprocess
    from nnops.ingest import from_table

    params = parse_params(_raw())
    raw = from_table(table, "target")
    arrays, spec = preprocess.make_splits(
        raw.frame, raw.meta, params.split, params.preprocess.scaling
    )
    meta = preprocess.processed_meta(raw.meta, arrays, spec, [])
    preprocess.write_processed(folder, arrays, spec, meta)
    return folder


def _setup(tmp_path: Path, uri: str, activation: str = "relu", data: Path | None = None,
           **tune: object):  # fmt: skip
    from nnops.tracking import connect
    from nnops.tune import begin
    from nnops.tune_study import Setup

    raw = _raw(**tune)
    raw["train"] |= {"epochs": 3, "batch_size": 32}
    for layer in raw["train"]["hidden_layers"]:
        layer["activation"] = activation
    params = parse_params(raw)
    connect(params.mlflow.model_copy(update={"tracking_uri": uri}))
    if data is None:
        data = _processed(tmp_path / "processed", _table())
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return begin(Setup(params, params.tune, storage, uri, str(data)))[0]


def _data(nan: bool = False):
    from nnops.train import TrainData

    rng = np.random.default_rng(0)
    centers = rng.uniform(0, 16, size=(3, 8))
    y = rng.integers(0, 3, size=240)
    x = np.clip(centers[y] + rng.normal(0, 2, size=(240, 8)), 0, 16).astype("float32")
    if nan:
        x[5, 2] = np.nan
    spec = {"method": "rescale", "scale": 1 / 16, "offset": 0.0}
    return TrainData(x[:180], y[:180], x[180:], y[180:], 3, spec)


def _optimize(setup, data, n: int) -> object:
    import tensorflow as tf

    from nnops.distribute import Runtime
    from nnops.tracking import RunInfo
    from nnops.tune_study import open_study
    from nnops.tune_trial import run_trial

    study = open_study(setup)
    runtime = Runtime(tf.distribute.get_strategy(), "none", 1, True, 0)
    parent = _parent(setup)
    assert isinstance(parent, RunInfo)
    study.optimize(lambda t: run_trial(t, setup, data, runtime, parent), n_trials=n,
                   catch=(Exception,))  # fmt: skip
    return study


def _parent(setup):
    from nnops.tune import _parent

    return _parent(setup)


def _children(setup) -> list:
    from nnops.tune_study import _children

    return sorted(_children(setup.tracking_uri, setup.parent_run_id),
                  key=lambda r: int(r.data.tags["nnops.trial.number"]))  # fmt: skip


def test_a_forced_pruner_prunes_and_the_run_shows_where(tmp_path: Path, mlflow_store: str):
    pruner = {
        "kind": "threshold",
        "startup_trials": 0,
        "warmup_epochs": 1,
        "reduction_factor": 3,
        "threshold": 0.0,
    }  # any val_loss > 0 is pruned after epoch 1
    setup = _setup(tmp_path, mlflow_store, pruner=pruner)
    study = _optimize(setup, _data(), 2)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    from mlflow import MlflowClient

    client = MlflowClient(setup.tracking_uri)
    for run in _children(setup):
        assert run.data.tags["nnops.trial.state"] == "pruned"
        assert run.data.tags["nnops.trial.stopped_epoch"] == "2"
        assert run.data.tags["mlflow.parentRunId"] == setup.parent_run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
        assert "train.learning_rate" in run.data.params


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path: Path, mlflow_store: str):
    # Linear layers carry the NaN input to the loss on every kernel (some CPU kernels, e.g.
    # with op determinism on, turn relu(NaN) into 0, and the model would learn around it).
    setup = _setup(tmp_path, mlflow_store, activation="linear",
                   pruner={"kind": "none", "startup_trials": 0, "warmup_epochs": 0,
                           "reduction_factor": 3, "threshold": None})  # fmt: skip
    study = _optimize(setup, _data(nan=True), 2)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # both ran: the study went on
    for run in _children(setup):
        assert run.info.status == "FAILED"
        assert run.data.tags["nnops.trial.state"] == "failed"
        assert "not finite at epoch 1" in run.data.tags["nnops.trial.error"]
    study = _optimize(setup, _data(), 1)
    assert study.trials[-1].state.name == "COMPLETE"
    assert _children(setup)[-1].data.tags["nnops.trial.state"] == "complete"


def test_cross_validation_scores_the_mean_over_folds(tmp_path: Path, mlflow_store: str):
    setup = _setup(tmp_path, mlflow_store, cv_folds=3)
    study = _optimize(setup, _data(), 1)
    trial = study.trials[0]
    run = _children(setup)[0]
    folds = [run.data.metrics[f"fold_{i}_val_loss"] for i in (1, 2, 3)]
    assert trial.value == pytest.approx(np.mean(folds))
    assert run.data.metrics["cv_std"] == pytest.approx(np.std(folds))
    assert trial.user_attrs["epochs"] == 9  # 3 folds x 3 epochs


# --- A study tunes one dataset ---------------------------------------------------------------


def _refusal(setup) -> str:
    from nnops.errors import NnopsError
    from nnops.tune import begin

    with pytest.raises(NnopsError) as err:
        begin(setup)
    message = str(err.value)
    assert "\n" not in message  # one line
    return message


def _parents(setup) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(setup.tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, "tags.`nnops.kind` = 'tune-study'")


def test_a_study_refuses_to_go_on_on_another_dataset(tmp_path: Path, mlflow_store: str):
    from nnops.errors import NnopsError
    from nnops.train_data import load_processed
    from nnops.tune import summarize
    from nnops.tune_data import check_best

    folder = _processed(tmp_path / "processed", _table("iris"))
    setup = _setup(tmp_path, mlflow_store, data=folder)
    study = _optimize(setup, load_processed(folder)[0], 1)
    record = study.user_attrs["data"]
    assert record["features"][0] == "sepal length (cm)" and record["label_column"] == "target"
    assert record["classes"] == ["setosa", "versicolor", "virginica"]
    assert sum(record["rows"].values()) < 150 and record["rows"]["val"] > 0  # no test rows
    assert study.trials[0].user_attrs["data_hash"] == record["hash"] == setup.data_hash
    summary = summarize(study, setup, tmp_path / "reports")
    assert summary["data_hash"] == record["hash"] and summary["data"] == record
    check_best(summary, folder)  # the data the best trial was scored on: applied

    _processed(folder, _table())  # preprocess rerun on the same data: the study goes on
    assert _setup(tmp_path, mlflow_store, data=folder).parent_run_id == setup.parent_run_id

    _processed(folder, _table("wine"))  # the data switched to another dataset
    message = _refusal(setup)
    assert message.startswith(f"study 'nnops-tune' (tune.study) in {setup.storage} was run on "
                              f"other data than {folder} holds now (feature columns 4 (sepal "
                              "length (cm), sepal width (cm), petal length (cm), petal width "
                              "(cm)) -> 13 (alcohol, malic_acid, ash, alcalinity_of_ash, ...), "
                              "classes 3 (setosa, versicolor, virginica) -> 3 (class_0, "
                              "class_1, class_2), train/val rows")  # fmt: skip
    assert "--study NAME, or tune.study in params.yaml" in message
    assert f"optuna delete-study --study-name nnops-tune --storage {setup.storage}" in message
    assert len(study.trials) == 1 and len(_parents(setup)) == 1  # nothing added, no new run
    with pytest.raises(NnopsError, match="best trial 0 of study 'nnops-tune' was scored on other"
                       " data than .* holds now \\(feature columns 4"):  # fmt: skip
        check_best(summary, folder)
    with pytest.raises(NnopsError, match="has no record of the data it was scored on"):
        check_best({**summary, "data_hash": None}, folder)

    fresh = _setup(tmp_path, mlflow_store, data=folder, study="wine")  # a new study: new data
    assert fresh.parent_run_id != setup.parent_run_id
    assert fresh.data_hash != setup.data_hash == record["hash"]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda t: t.iloc[:-30], "same columns and classes, train/val rows"),
        (lambda t: t.assign(**{"sepal width (cm)": t["sepal width (cm)"] + 0.1}),
         "(same columns, classes and row counts, other rows)"),
        (lambda t: t[[*t.columns[::-1]]], "(the same feature columns in another order)"),
    ],
)  # fmt: skip
def test_the_refusal_says_what_differs_in_the_same_columns(
    tmp_path: Path, mlflow_store: str, change, said: str
):
    folder = _processed(tmp_path / "processed", _table())
    setup = _setup(tmp_path, mlflow_store, data=folder)
    _processed(folder, change(_table()))
    assert said in _refusal(setup)


def test_a_study_of_an_older_nnops_is_refused_unless_empty(tmp_path: Path, mlflow_store: str):
    import optuna

    from nnops.errors import NnopsError

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="nnops-tune")  # no data record
    _setup(tmp_path, mlflow_store)  # empty: adopted, its data recorded from now on
    assert optuna.load_study(study_name="nnops-tune", storage=storage).user_attrs["data"]
    old = optuna.create_study(storage=storage, study_name="old")
    old.add_trial(optuna.trial.create_trial(value=0.5))
    with pytest.raises(NnopsError, match="study 'old' \\(tune.study\\) in .* holds 1 trial\\(s\\) "
                       "from an nnops that did not record what data they ran on, so it cannot "
                       "tell"):  # fmt: skip
        _setup(tmp_path, mlflow_store, study="old")
    assert "data" not in optuna.load_study(study_name="old", storage=storage).user_attrs


def test_a_worker_refuses_data_rewritten_after_the_study_checked_it(
    tmp_path: Path, mlflow_store: str
):
    from nnops.errors import NnopsError
    from nnops.train_data import load_processed
    from nnops.tune_data import identity
    from nnops.tune_study import open_study
    from nnops.tune_trial import work

    folder = _processed(tmp_path / "processed", _table())
    setup = _setup(tmp_path, mlflow_store, data=folder)
    data, meta, _ = load_processed(folder)  # what a worker loads hashes as the check read it
    val = (data.x_val, data.y_val)
    assert identity((data.x_train, data.y_train), val, data.preprocessing, meta)["hash"] == (
        setup.data_hash
    )
    _processed(folder, _table("wine"))  # a preprocess run between the check and the worker
    with pytest.raises(NnopsError, match="processed changed since this nnops tune started"):
        work(setup, 1, 0, 0)
    assert open_study(setup).trials == []


def test_the_report_has_a_tuning_section_only_with_content_when_a_study_chose_the_model():
    from nnops import report as rp

    params = parse_params(_raw())
    plain = rp.build_report(rp.ReportInputs(params=params))
    assert "were not chosen by a tuning study" in plain.html and "### Tuning" not in plain.markdown
    tune = {"study": "s1", "storage": "sqlite:///optuna.db", "best_trial": 4, "best_value": 0.1234,
            "metric": "val_loss", "parent_run_id": "abc123", "epochs": 30,
            "trials": {"complete": 3, "pruned": 2, "fail": 1, "running": 0, "waiting": 0},
            "params": {"train.learning_rate": 0.003}}  # fmt: skip
    run = {"run_id": "r", "extra": {"tune": tune}}
    tuned = rp.build_report(rp.ReportInputs(params=params, run=run))
    assert "Chosen by Optuna study <b>s1</b>" in tuned.html
    assert "trial 4 of 6" in tuned.html and "<code>train.learning_rate</code>" in tuned.html
    assert "abc123" in tuned.markdown and "val_loss 0.1234" in tuned.markdown
    assert rp.params_diff(params, params) == []  # nothing changed against the committed file


def test_a_linear_model_trains_with_the_default_tune_section_and_tuning_it_says_what_to_change():
    """`train.hidden_layers: []` with allow_no_hidden_layers (README: a linear model) failed
    check_params through tune.space's layer dimensions, for a user who was not tuning."""
    from conftest import REPO
    from nnops.config import parse_params
    from nnops.tune_space import check_space

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(hidden_layers=[], allow_no_hidden_layers=True)
    params = parse_params(raw)  # accepted: the space is checked against it when tuning
    assert not params.train.hidden_layers and params.tune.space
    with pytest.raises(ValueError) as err:
        check_space(params.tune.space, params.train, tuning=True)
    assert "train.hidden_layers is empty (a linear model), so a trial has no layer to copy" in (
        str(err.value)
    )
    assert "drop the train.hidden_layers entries from tune.space" in str(err.value)
