"""The network built from params, its preprocessing, saving, and the training loop on tiny data."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import section
from nnops.config import HiddenLayer
from nnops.distribute import Runtime
from nnops.errors import NnopsError
from nnops.loops import epoch_batches
from nnops.model import build_model, compile_model, make_optimizer, preprocessing_layer
from nnops.train import TrainData, best_epoch, fit
from nnops.train_data import check_preprocessing

pytestmark = pytest.mark.unit

RESCALE = {"method": "rescale", "scale": 1 / 16, "offset": 0.0}


def _runtime() -> Runtime:
    return Runtime(tf.distribute.get_strategy(), "none", 1, True, 0)


def _data(n: int = 240, d: int = 12, k: int = 3, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 16, size=(k, d))
    y = rng.integers(0, k, size=n)
    x = np.clip(centers[y] + rng.normal(0, 3, size=(n, d)), 0, 16).astype("float32")
    cut = int(n * 0.8)
    return TrainData(x[:cut], y[:cut], x[cut:], y[cut:], k, RESCALE)


def test_default_params_build_the_textbook_model():
    params = section("train")
    model = build_model(params, n_features=64, n_classes=10, preprocessing={"method": "none"})
    compile_model(model, params, steps_per_epoch=10)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [(d.units, d.activation.__name__) for d in dense] == [
        (64, "relu"),
        (64, "relu"),
        (10, "softmax"),
    ]
    assert len(model.layers) == 3  # nothing else without preprocessing or dropout
    assert all(d.kernel_regularizer is None for d in dense)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)
    assert model.loss == "sparse_categorical_crossentropy"
    assert params.batch_size == 32
    assert model.output_shape == (None, 10)


def test_preprocessing_layer_from_the_preprocess_spec():
    rescale = preprocessing_layer(RESCALE, 4)
    assert isinstance(rescale, keras.layers.Rescaling)
    np.testing.assert_allclose(rescale(np.full((1, 4), 8.0, "float32")), 0.5)
    spec = {"method": "standardize", "mean": [1.0, 2.0], "variance": [4.0, 1.0]}
    norm = preprocessing_layer(spec, 2)
    assert isinstance(norm, keras.layers.Normalization)
    np.testing.assert_allclose(norm(np.array([[3.0, 2.0]], "float32")), [[1.0, 0.0]], atol=1e-5)
    assert preprocessing_layer({"method": "none"}, 3) is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"method": "whiten"}, "method='whiten'"),
        ({"method": "standardize", "mean": [0.0, 1.0, 2.0], "variance": [1.0, 1.0]}, "variance"),
        ({"method": "rescale"}, "needs 'scale'"),
        ({"method": "rescale", "scale": [1.0, 2.0], "offset": 0.0}, "scale has 2 values"),
    ],
)
def test_bad_preprocessing_spec_names_the_problem(spec, message):
    with pytest.raises(NnopsError, match=message):
        preprocessing_layer(spec, 3)


def test_params_shape_the_network_and_optimizer():
    params = section(
        "train",
        hidden_layers=(
            HiddenLayer(units=32, activation="tanh", dropout=0.25),
            HiddenLayer(units=16, activation="gelu", dropout=0.0),
        ),
        l2=0.01,
        optimizer="sgd",
        learning_rate=0.05,
        lr_schedule="exponential",
        lr_decay_rate=0.5,
    )
    model = build_model(params, 5, 4, RESCALE)
    names = [layer.name for layer in model.layers]
    assert names == ["preprocess", "hidden_1", "dropout_1", "hidden_2", "probabilities"]
    assert model.get_layer("dropout_1").rate == 0.25
    assert model.get_layer("hidden_1").kernel_regularizer.l2 == pytest.approx(0.01)
    opt = make_optimizer(params, steps_per_epoch=10)
    assert isinstance(opt, keras.optimizers.SGD)
    schedule = opt._learning_rate  # the schedule object the optimizer holds
    assert float(schedule(10)) == pytest.approx(0.025)  # one epoch: one decay step
    adamw = make_optimizer(params.model_copy(update={"optimizer": "adamw"}), 10)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.01)
    cosine = make_optimizer(params.model_copy(update={"lr_schedule": "cosine", "epochs": 2}), 10)
    assert float(cosine._learning_rate(20)) == pytest.approx(0.0, abs=1e-6)


def test_saved_model_takes_raw_input_and_loads_in_safe_mode(tmp_path):
    data = _data()
    model, _ = fit(data, section("train", epochs=2), _runtime(), backup_dir=None)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    raw = data.x_val[:7]
    np.testing.assert_allclose(loaded.predict(raw, verbose=0), model.predict(raw, verbose=0))
    probs = loaded.predict(raw, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert loaded.get_layer("preprocess").scale == pytest.approx(1 / 16)


def test_mixed_precision_keeps_float32_probabilities():
    params = section("train", mixed_precision=True)
    model = build_model(params, 6, 3, RESCALE, mixed_precision=True)
    assert model.get_layer("hidden_1").compute_dtype == "float16"
    assert model(np.ones((2, 6), "float32")).dtype == "float32"
    assert isinstance(make_optimizer(params, 5, True), keras.optimizers.LossScaleOptimizer)


def test_epoch_order_depends_only_on_seed_and_epoch():
    x = np.arange(20, dtype="float32").reshape(10, 2)
    y = np.arange(10)
    epoch = tf.Variable(0, dtype=tf.int64)

    def order(seed: int, e: int) -> list[int]:
        epoch.assign(e)
        ds = epoch_batches(x, y, 4, seed, epoch)
        return [int(v) for _, yb in ds for v in yb.numpy()]

    first = order(1, 0)
    assert sorted(first) == list(range(10))  # every example once per epoch
    assert order(1, 0) == first  # same seed and epoch: same order
    assert order(1, 1) != first  # another epoch: another order
    assert order(2, 0) != first


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_two_deterministic_fits_are_bit_identical(jit_compile):
    data = _data()
    params = section(
        "train",
        epochs=3,
        learning_rate=0.01,
        hidden_layers=(
            HiddenLayer(units=16, activation="relu", dropout=0.2),
            HiddenLayer(units=8, activation="relu", dropout=0.0),
        ),
    )
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(params.seed)
        tf.config.experimental.enable_op_determinism()
        model, result = fit(data, params, _runtime(), backup_dir=None, jit_compile=jit_compile)
        runs.append((model.get_weights(), result.history))
    (w1, h1), (w2, h2) = runs
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2, strict=True))
    assert h1 == h2
    assert [r["epoch"] for r in h1] == [1, 2, 3]
    assert h1[-1]["val_accuracy"] > 0.5  # and it learned (chance: 1/3)


@pytest.mark.parametrize(
    "early_stopping, torn, jit_compile",
    [
        (False, False, False),
        (True, False, False),
        (False, True, False),
        (True, True, False),
        (True, False, True),
    ],  # fmt: skip
)
def test_resume_from_backup_equals_an_uninterrupted_fit(
    tmp_path, early_stopping, torn, jit_compile
):
    data = _data()
    params = section(
        "train",
        epochs=4,
        hidden_layers=(HiddenLayer(units=16, activation="relu", dropout=0.3),),
        early_stopping=section(
            "train.early_stopping", enabled=early_stopping, patience=3, monitor="val_accuracy"
        ),
    )

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # after epoch 2 is backed up

    def seeded() -> None:
        keras.utils.set_random_seed(params.seed)
        tf.config.experimental.enable_op_determinism()

    seeded()
    full, full_result = fit(data, params, _runtime(), tmp_path / "full", jit_compile=jit_compile)
    seeded()
    with pytest.raises(KeyboardInterrupt):
        fit(data, params, _runtime(), tmp_path / "cut", [Stop()], jit_compile=jit_compile)
    meta = tmp_path / "cut" / "training_metadata.json"
    if torn:  # killed after Keras wrote epoch 2's weights but before it wrote the number 2
        meta.write_text(json.dumps({"epoch": 1, "batch": 0}))
    seeded()
    keras.utils.set_random_seed(params.seed + 99)  # a fresh process would not share RNG state
    resumed, result = fit(data, params, _runtime(), tmp_path / "cut", jit_compile=jit_compile)
    assert result.start_epoch == 2
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.history == full_result.history
    assert result.best_epoch == full_result.best_epoch
    for a, b in zip(full.get_weights(), resumed.get_weights(), strict=True):
        assert np.array_equal(a, b)
    if early_stopping:  # the saved model holds the best epoch's weights, not the last one's
        assert list((tmp_path / "cut").glob("best-epoch-*.npz"))


@pytest.mark.parametrize("pipeline", ["tf_data", "numpy"])
def test_in_graph_loop_trains_like_model_fit(pipeline):
    data = _data()
    fits = {}
    for name in ("in_graph", pipeline):
        keras.utils.set_random_seed(7)
        params = section("train", epochs=3, learning_rate=0.01, input_pipeline=name)
        model, result = fit(data, params, _runtime(), backup_dir=None)
        fits[name] = (model.get_weights(), result.history)
    (w_graph, h_graph), (w_fit, h_fit) = fits["in_graph"], fits[pipeline]
    assert [r["epoch"] for r in h_graph] == [r["epoch"] for r in h_fit] == [1, 2, 3]
    if pipeline == "tf_data":  # same batches in the same order: the same training, to rounding
        for a, b in zip(w_graph, w_fit, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
        for a, b in zip(h_graph, h_fit, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
            assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.03)
    else:  # Keras shuffles by itself: a different order, a similar result
        assert h_graph[-1]["val_accuracy"] == pytest.approx(h_fit[-1]["val_accuracy"], abs=0.2)


def test_best_epoch_ranks_losses_down_and_accuracies_up():
    history = [
        {"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.7},
        {"epoch": 2, "val_loss": 0.3, "val_accuracy": 0.9},
        {"epoch": 3, "val_loss": 0.3, "val_accuracy": 0.8},
    ]
    assert best_epoch(history, "val_loss") == 2  # ties go to the earlier epoch
    assert best_epoch(history, "val_accuracy") == 2
    assert best_epoch(history, "loss") is None


def test_preprocessing_spec_must_reproduce_the_processed_features():
    x_raw = np.random.default_rng(0).uniform(0, 16, size=(20, 4)).astype("float32")
    check_preprocessing(RESCALE, x_raw, x_raw / 16, "p.json")  # consistent: passes
    with pytest.raises(NnopsError, match="p.json: the preprocessing it describes does not"):
        check_preprocessing(RESCALE, x_raw, x_raw / 255, "p.json")
    with pytest.raises(NnopsError, match="differ in shape"):
        check_preprocessing(RESCALE, x_raw, x_raw[:, :3], "p.json")


@pytest.mark.parametrize("pipeline", ["in_graph", "numpy"])
def test_a_diverging_fit_stops_at_the_first_non_finite_loss(pipeline):
    """l2=1e38 makes every loss NaN: training used to finish, call epoch 1 the best, and leave
    evaluate to crash in scikit-learn on NaN probabilities."""
    from nnops.train import refuse_divergence

    data = _data()
    params = section("train", epochs=4, l2=1e38, input_pipeline=pipeline)
    seen: list[int] = []
    with pytest.raises(NnopsError) as err:
        fit(data, params, _runtime(), backup_dir=None,
            on_epoch=[lambda e, r: seen.append(e), refuse_divergence(params)])  # fmt: skip
    assert seen == [1]  # stopped at the first epoch, not after all four
    assert str(err.value).startswith("training diverged: loss is nan at epoch 1; lower ")
    assert "train.l2 (now 1e+38)" in str(err.value)


def test_the_same_weights_save_to_the_same_bytes(tmp_path):
    """Keras stamps the save time into every .keras file, so an identical retrain changed
    models/model.keras for DVC; the saved file now depends on the model alone."""
    import time

    from nnops.train import save_model

    model, _ = fit(_data(), section("train", epochs=1), _runtime(), backup_dir=None)
    save_model(model, tmp_path / "a.keras")
    time.sleep(1.1)  # Keras's stamp has one-second resolution
    save_model(model, tmp_path / "b.keras")
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    loaded = keras.saving.load_model(tmp_path / "b.keras", safe_mode=True)
    x = _data().x_val[:5]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
