"""Attributions and importances: the sanity checks that they point at the features that matter."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest

from conftest import section
from nnops import attribution, explain
from nnops.errors import NnopsError
from nnops.scoring import predict_proba

pytestmark = pytest.mark.unit

INFORMATIVE_PIXELS = [2, 7, 13]  # on a 4x4 image
INFORMATIVE_COLUMNS = [0, 3, 5]  # of 8 tabular features


def _fit(x: np.ndarray, y: np.ndarray, first_layer, epochs: int = 40):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            first_layer,
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(int(y.max()) + 1, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def image_case():
    """4x4 'images' of pixel values 0..16 whose class is the brightest of three fixed pixels."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, size=(1500, 16)).astype(np.float32)
    y = x[:, INFORMATIVE_PIXELS].argmax(axis=1).astype(np.int64)
    model = _fit(x[:1200], y[:1200], keras.layers.Rescaling(1 / 16))
    return model, x[1200:], y[1200:]


@pytest.fixture(scope="module")
def table_case():
    """Eight standard-normal columns; the class is the largest of three of them."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1500, 8)).astype(np.float32) * 3 + 10
    y = x[:, INFORMATIVE_COLUMNS].argmax(axis=1).astype(np.int64)
    norm = keras.layers.Normalization()
    norm.adapt(x[:1200])
    model = _fit(x[:1200], y[:1200], norm)
    return model, x[1200:], y[1200:]


def _accuracy(model, x, y) -> float:
    return float((predict_proba(model, x).argmax(1) == y).mean())


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input"])
def test_attribution_puts_the_informative_pixels_on_top(image_case, method):
    model, x, y = image_case
    assert _accuracy(model, x, y) > 0.85  # the check below means nothing for a model that failed
    probs = predict_proba(model, x)
    attrs = attribution.class_attributions(
        model, x, y, probs, ["a", "b", "c"], [4, 4], samples=60, method=method, steps=24
    )
    assert [a.attribution.shape for a in attrs] == [(4, 4)] * 3
    assert all(a.n_examples == 60 for a in attrs)
    strength = np.mean([np.abs(a.attribution).ravel() for a in attrs], axis=0)
    assert set(np.argsort(-strength)[:3]) == set(INFORMATIVE_PIXELS)
    # Each class's own pixel pushes towards it.
    for c, a in enumerate(attrs):
        assert a.attribution.ravel()[INFORMATIVE_PIXELS[c]] > 0


def test_integrated_gradients_add_up_to_the_change_in_output(image_case):
    """Completeness: attributions sum to F(x) - F(baseline) for the explained class."""
    model, x, y = image_case
    rows = x[:20]
    target = predict_proba(model, rows).argmax(1).astype(np.int32)
    attr = attribution.integrated_gradients(model, rows, target, steps=128, chunk_rows=1000)
    f_x = predict_proba(model, rows)[np.arange(20), target]
    f_0 = predict_proba(model, np.zeros_like(rows))[np.arange(20), target]
    np.testing.assert_allclose(attr.sum(axis=1), f_x - f_0, atol=0.02)


def test_integrated_gradients_do_not_depend_on_chunking(image_case):
    model, x, _ = image_case
    target = np.zeros(7, np.int32)
    a = attribution.integrated_gradients(model, x[:7], target, steps=8, chunk_rows=8)
    b = attribution.integrated_gradients(model, x[:7], target, steps=8, chunk_rows=10_000)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_permutation_importance_puts_the_informative_columns_on_top(table_case):
    model, x, y = table_case
    assert _accuracy(model, x, y) > 0.85
    names = [f"col{i}" for i in range(8)]
    imps = explain.permutation_importances(model, x, y, names, repeats=3, seed=0)
    assert {f.feature for f in imps[:3]} == {f"col{i}" for i in INFORMATIVE_COLUMNS}
    assert all(f.importance_mean > 0.1 for f in imps[:3])
    assert all(abs(f.importance_mean) < 0.05 for f in imps[3:])
    means = [f.importance_mean for f in imps]
    assert means == sorted(means, reverse=True)


def test_permutation_importance_is_reproducible_with_a_seed(table_case):
    model, x, y = table_case
    names = [f"col{i}" for i in range(8)]
    a = explain.permutation_importances(model, x, y, names, repeats=2, seed=3)
    b = explain.permutation_importances(model, x, y, names, repeats=2, seed=3)
    assert a == b


def test_permutation_importance_rejects_mismatched_names(table_case):
    model, x, y = table_case
    with pytest.raises(NnopsError, match="3 feature names for 8 feature columns"):
        explain.permutation_importances(model, x, y, ["a", "b", "c"], repeats=1, seed=0)


def test_most_confident_errors_are_wrong_and_sorted():
    probs = np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.7, 0.3]], dtype=np.float32
    )
    y = np.array([0, 0, 1, 0, 1])
    errors = explain.most_confident_errors(y, probs, k=2)
    assert [e.index for e in errors] == [3, 1]
    assert [(e.true_label, e.predicted_label) for e in errors] == [(0, 1), (0, 1)]
    assert errors[0].confidence == pytest.approx(0.95)


def test_image_shape_must_match_the_features(image_case):
    model, x, y = image_case
    probs = predict_proba(model, x)
    with pytest.raises(NnopsError, match=r"image_shape \[5, 5\] holds 25 values"):
        attribution.class_attributions(model, x, y, probs, "abc", [5, 5], 5, "gradient_x_input", 1)


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def test_explain_test_set_for_images_writes_both_grids(image_case):
    model, x, y = image_case
    meta = {"source": "npz", "class_names": ["a", "b", "c"], "image_shape": [4, 4]}
    params = section("explain", samples=10, steps=8, errors=4)
    probs = predict_proba(model, x)
    result = explain.explain_test_set(model, {"x_raw": x, "y": y}, probs, meta, params, seed=0)
    assert set(result.files) >= {"attributions.png", "misclassified.png", "slices.json"}
    assert "importances.png" not in result.files
    for name in ("attributions.png", "misclassified.png"):
        width, height = _png_size(result.files[name])
        assert width > 200 and height > 100
    assert result.summary["kind"] == "attribution"
    assert result.summary["examples_per_class"] == {"a": 10, "b": 10, "c": 10}
    assert len(result.summary["misclassified"]) <= 4
    for err in result.summary["misclassified"]:
        assert err["true"] != err["predicted"]


def test_explain_test_set_for_tables_ranks_features_and_slices(table_case):
    model, x, y = table_case
    group = np.where(np.arange(len(x)) % 2 == 0, "even", "odd")
    test = {"x_raw": x, "y": y, "slice__group": group}
    meta = {
        "source": "csv",
        "class_names": ["p", "q", "r"],
        "image_shape": None,
        "feature_names": [f"col{i}" for i in range(8)],
    }
    params = section("explain", slice_by=("group",), repeats=2)
    result = explain.explain_test_set(model, test, predict_proba(model, x), meta, params, seed=0)
    assert {"importances.png", "importances.csv", "slices.csv"} <= set(result.files)
    assert "attributions.png" not in result.files
    table = result.files["importances.csv"].decode().splitlines()
    assert table[0] == "rank,feature,importance_mean,importance_std"
    assert len(table) == 9
    assert {line.split(",")[1] for line in table[1:4]} == {"col0", "col3", "col5"}
    slices_csv = result.files["slices.csv"].decode()
    assert "group,even," in slices_csv and "group,odd," in slices_csv


def test_explain_disabled_still_reports_slices_without_the_model(table_case):
    model, x, y = table_case
    meta = {"class_names": ["p", "q", "r"], "image_shape": None}
    params = section("explain", enabled=False)
    probs = predict_proba(model, x)  # evaluate's hand-over: the model itself is not needed
    result = explain.explain_test_set(None, {"x_raw": x, "y": y}, probs, meta, params, seed=0)
    assert result.summary["kind"] == "disabled"
    assert set(result.files) == {"explain.json", "slices.json", "slices.csv"}
    accuracy = float((probs.argmax(axis=1) == y).mean())
    assert result.summary["test_accuracy"] == pytest.approx(accuracy)


def test_explain_test_set_names_a_missing_slice_column(table_case):
    model, x, y = table_case
    test = {"x_raw": x, "y": y, "slice__region": np.array(["n"] * len(x))}
    params = section("explain", slice_by=("regoin",))
    probs = predict_proba(model, x)
    with pytest.raises(NnopsError, match=r"'regoin' not found.*available slice columns: region"):
        explain.explain_test_set(model, test, probs, {"image_shape": None}, params, seed=0)


def test_read_test_skips_the_scaled_copy_and_checks_slice_columns(tmp_path):
    path = tmp_path / "test.npz"
    x = np.ones((3, 2), np.float32)
    np.savez(path, x_raw=x, x=x / 2, y=np.arange(3), slice__region=np.array(["n", "s", "n"]))
    assert sorted(explain.read_test(path, ["region"])) == ["slice__region", "x_raw", "y"]
    with pytest.raises(NnopsError, match=r"explain.slice_by: column\(s\) 'city' not found"):
        explain.read_test(path, ["city"])
    with pytest.raises(NnopsError, match="absent.npz: file not found"):
        explain.read_test(tmp_path / "absent.npz", [])
