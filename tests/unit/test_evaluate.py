"""Scoring, plot rows, file edges and hand-over of nnops.evaluate; the learning curve module."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import section
from nnops import catalog, scoring
from nnops import evaluate as ev
from nnops import learning_curve as lc
from nnops.catalog import read_split
from nnops.diagnose import diagnose
from nnops.errors import NnopsError

pytestmark = pytest.mark.unit

NAMES = ["cat", "dog", "owl"]


def test_score_split_by_hand():
    y = np.array([0, 0, 1, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    s = scoring.score_split(y, proba, NAMES)
    assert s.accuracy == pytest.approx(0.75)
    assert s.loss == pytest.approx(-np.mean(np.log([0.8, 0.3, 0.7, 0.8])))
    # cat: P=1, R=.5, F1=2/3; dog: P=.5, R=1, F1=2/3; owl: 1, 1, 1.
    assert s.f1_macro == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert s.confusion_matrix == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert [r["class"] for r in s.per_class] == [
        "owl",
        "cat",
        "dog",
    ]  # best F1 first, ties by index
    cat = next(r for r in s.per_class if r["class"] == "cat")
    assert (cat["precision"], cat["recall"], cat["support"]) == (1.0, 0.5, 2)
    assert s.headline() == {"loss": s.loss, "accuracy": 0.75, "f1_macro": s.f1_macro}


def test_score_split_renormalises_float32_rows_and_checks_shape():
    y = np.array([0, 1])
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32) * np.float32(1.0000001)
    assert math.isfinite(scoring.score_split(y, proba, NAMES).loss)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        scoring.score_split(y, proba[:, :2], NAMES)


def test_class_absent_from_a_split_gets_zero_scores_not_an_error():
    s = scoring.score_split(np.array([0, 0]), np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]]), NAMES)
    owl = next(r for r in s.per_class if r["class"] == "owl")
    assert owl == {
        "class": "owl",
        "index": 2,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
    }


def test_confusion_rows_name_classes():
    rows = scoring.confusion_rows(np.array([0, 2]), np.array([1, 2]), NAMES)
    assert rows == [{"actual": "cat", "predicted": "dog"}, {"actual": "owl", "predicted": "owl"}]


def test_flat_metrics_uses_dotted_names_and_skips_text():
    flat = ev.flat_metrics({"test": {"accuracy": 0.9}, "fit": {"verdict": "good fit", "gap": 1}})
    assert flat == {"test.accuracy": 0.9, "fit.gap": 1.0}


def test_subset_indices_are_seeded_and_stratified():
    y = np.repeat(np.arange(4), 50)
    a = lc.subset_indices(y, 0.2, seed=3)
    assert np.array_equal(a, lc.subset_indices(y, 0.2, seed=3))
    assert not np.array_equal(a, lc.subset_indices(y, 0.2, seed=4))
    assert len(a) == 40 and np.bincount(y[a]).tolist() == [10, 10, 10, 10]
    assert len(lc.subset_indices(y, 1.0, seed=3)) == 200


def test_read_split_names_the_file_and_missing_array(tmp_path: Path):
    with pytest.raises(NnopsError, match="test.npz: file not found"):
        read_split(tmp_path / "test.npz")
    np.savez(tmp_path / "val.npz", x=np.zeros((2, 3)), y=np.zeros(2))
    with pytest.raises(NnopsError, match=r"val.npz: missing array\(s\) x_raw"):
        read_split(tmp_path / "val.npz")
    np.savez(tmp_path / "train.npz", x_raw=np.zeros((2, 3)), y=np.zeros(3))
    with pytest.raises(NnopsError, match="train.npz: x_raw has shape"):
        read_split(tmp_path / "train.npz")


def test_read_history_names_a_bad_cell_and_reads_an_empty_one_as_nan(tmp_path: Path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_loss\n1,0.5,0.6\n2,abc,0.5\n")
    with pytest.raises(NnopsError, match=r"history.csv:3: column 'loss' holds 'abc', not a number"):
        catalog.read_history(path)
    path.write_text("epoch,loss,val_loss\n1,0.5,0.6\n2,0.4,0.5\n")
    assert catalog.read_history(path) == {
        "epoch": [1, 2],
        "loss": [0.5, 0.4],
        "val_loss": [0.6, 0.5],
    }
    path.write_text("epoch,loss,val_loss\n1,0.5,\n")
    assert math.isnan(catalog.read_history(path)["val_loss"][0])
    with pytest.raises(NnopsError, match="absent.csv: file not found"):
        catalog.read_history(tmp_path / "absent.csv")
    assert catalog.read_history(tmp_path / "absent.csv", missing_ok=True) is None


def test_write_plots_writes_dvc_files_and_pngs(tmp_path: Path):
    y = np.array([0, 1, 2, 2])
    proba = np.eye(3)[[0, 1, 2, 1]]
    scores = scoring.score_split(y, proba, NAMES)
    history = {
        "epoch": [1, 2],
        "loss": [1.0, 0.5],
        "val_loss": [1.1, 0.7],
        "accuracy": [0.5, 0.8],
        "val_accuracy": [0.4, 0.7],
    }
    curve = [
        {"fraction": 0.5, "train_size": 2, "train_accuracy": 1.0, "val_accuracy": 0.5},
        {"fraction": 1.0, "train_size": 4, "train_accuracy": 1.0, "val_accuracy": 0.75},
    ]
    pngs = ev.write_plots(tmp_path, history, scores, NAMES, curve, y, proba.argmax(axis=1))
    names = sorted(p.name for p in pngs)
    assert names == ["accuracy.png", "confusion_test.png", "learning_curve.png", "loss.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    with (tmp_path / "confusion_test.csv").open() as fh:
        assert list(csv.DictReader(fh))[3] == {"actual": "owl", "predicted": "dog"}
    with (tmp_path / "learning_curve.csv").open() as fh:
        assert [r["train_size"] for r in csv.DictReader(fh)] == ["2", "4"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_evaluation_report_puts_test_details_first():
    y = np.array([0, 1, 2])
    s = scoring.score_split(y, np.eye(3)[y] * 0.9 + 0.1 / 3, NAMES)
    fit = diagnose(s.headline(), s.headline(), None, section("evaluate.fit"))
    report = ev.evaluation_report({"train": s, "val": s, "test": s}, NAMES, fit, None)
    assert report["verdict"] == "good fit" and report["class_names"] == NAMES
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert report["splits"]["test"]["n"] == 3 and report["learning_curve"] is None


def test_learning_curve_retrains_the_train_stage_model_on_growing_shares():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    train, val = (x[:1200], y[:1200]), (x[1200:], y[1200:])
    names = [str(i) for i in range(10)]
    fitter = lc.keras_fitter(
        section("train", epochs=3), {"method": "rescale", "scale": 1 / 16}, 10, val
    )
    rows = lc.learning_curve(fitter, train, val, [1.0, 0.1], names, seed=0)
    assert [r["fraction"] for r in rows] == [0.1, 1.0]
    assert [r["train_size"] for r in rows] == [120, 1200]
    assert rows[1]["val_accuracy"] > rows[0]["val_accuracy"] + 0.1
    again = lc.learning_curve(fitter, train, val, [0.1], names, seed=0)
    assert again[0]["val_accuracy"] == rows[0]["val_accuracy"]  # seeded: same subset, same model


def test_single_curve_point_writes_the_dvc_file_but_no_figure(tmp_path: Path):
    y = np.array([0, 1, 2])
    s = scoring.score_split(y, np.eye(3)[y], NAMES)
    point = ev.curve_point(1.0, 3, s, s)
    assert point["train_size"] == 3 and point["val_accuracy"] == 1.0
    pngs = ev.write_plots(tmp_path, {}, s, NAMES, [point], y, y)
    assert [p.name for p in pngs] == ["confusion_test.png"]
    assert (tmp_path / "learning_curve.csv").read_text().splitlines()[1].startswith("1.0,3,")


def _stage_inputs(root: Path) -> dict[str, Path]:
    """A processed data folder, train outputs and a small Keras model, as the stages leave them."""
    import json

    import keras

    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 90), ("val", 30), ("test", 40)):
        x = rng.uniform(0, 16, size=(n, 4)).astype(np.float32)
        y = x[:, :3].argmax(axis=1).astype(np.int64)
        np.savez(data / f"{split}.npz", x_raw=x, x=x / 16, y=y)
    meta = {"class_names": NAMES, "data_hash": "d" * 64, "image_shape": None}
    (data / "meta.json").write_text(json.dumps(meta))
    history = root / "history.csv"
    history.write_text("epoch,loss,val_loss,accuracy,val_accuracy\n0,1.0,1.1,0.5,0.4\n")
    run = root / "run.json"
    run.write_text(json.dumps({"run_id": "r", "experiment_id": "0", "tracking_uri": "sqlite://"}))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.save(root / "model.keras")
    return {"data": data, "history": history, "run": run, "model": root / "model.keras"}


def test_evaluate_scores_each_split_and_hands_test_predictions_to_explain(tmp_path: Path):
    from nnops import explain

    paths = _stage_inputs(tmp_path)
    summary = tmp_path / "summary.json"  # absent: the model holds the last epoch's weights
    inputs = ev.read_inputs(paths["data"], paths["history"], summary, paths["model"], paths["run"])
    model = catalog.load_model(paths["model"])
    result = ev.evaluate(model, inputs, section("evaluate.fit"))
    x_test, y_test = inputs.splits["test"]
    np.testing.assert_array_equal(result.test_proba, scoring.predict_proba(model, x_test))
    assert result.metrics["test"]["accuracy"] == result.scores["test"].accuracy
    assert result.report["splits"]["train"]["n"] == 90

    files = ev.write_outputs(tmp_path / "reports", result, inputs)
    assert sorted(p.name for p in files) == [
        "accuracy.png", "confusion_test.png", "evaluation.json", "loss.png", "metrics.json",
    ]  # fmt: skip
    handed = tmp_path / "reports" / "predictions.npz"
    test = {"x_raw": x_test, "y": y_test}
    meta = {"data_hash": inputs.data_hash}
    # explain, off: the hand-over suffices, the model is not even loaded
    loaded, probs = explain.model_and_predictions(paths["model"], handed, test, meta, False)
    assert loaded is None
    np.testing.assert_array_equal(probs, result.test_proba)

    # Another model (or other data) than evaluate scored: explain scores the test split itself.
    keras_model = catalog.load_model(paths["model"])
    keras_model.layers[-1].kernel.assign(np.ones((4, 3), np.float32))
    keras_model.save(paths["model"])
    loaded, probs = explain.model_and_predictions(paths["model"], handed, test, meta, False)
    assert loaded is not None
    np.testing.assert_allclose(probs, scoring.predict_proba(keras_model, x_test), rtol=1e-6)
    assert not np.allclose(probs, result.test_proba)
    stale = explain.model_and_predictions(paths["model"], handed, test, {"data_hash": "e"}, False)
    assert stale[0] is not None


def test_unreadable_predictions_are_named(tmp_path: Path):
    path = tmp_path / "predictions.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(NnopsError, match="predictions.npz: cannot read"):
        catalog.read_predictions(path, "m", "d", rows=3)
    catalog.write_predictions(path, np.full((3, 2), 0.5), "m", "d")
    assert catalog.read_predictions(path, "m", "d", rows=3).shape == (3, 2)
    assert catalog.read_predictions(path, "other", "d", rows=3) is None
    with pytest.raises(NnopsError, match=r"proba has shape \(3, 2\); expected \(4, classes\)"):
        catalog.read_predictions(path, "m", "d", rows=4)
