"""The fit diagnosis: pure cases on hand-made numbers, then three real trainings on digits."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import section
from nnops.config import HiddenLayer
from nnops.diagnose import (
    ACTIONS,
    GOOD_FIT,
    OVERFITTING,
    UNDERFITTING,
    diagnose,
    epoch_evidence,
    restored_epoch,
)

pytestmark = pytest.mark.unit

T = section(
    "evaluate.fit",
    min_train_accuracy=0.9,
    max_accuracy_gap=0.05,
    max_loss_gap=0.15,
    min_val_loss_rise=0.1,
)


def scores(acc: float, loss: float) -> dict[str, float]:
    return {"accuracy": acc, "loss": loss}


def test_restored_epoch_only_when_early_stopping_restored_the_best_weights():
    assert restored_epoch({"best_epoch": 4, "restored_best_weights": True}) == 4
    assert restored_epoch({"best_epoch": 4, "restored_best_weights": False}) is None
    assert restored_epoch({"best_epoch": None, "restored_best_weights": True}) is None
    assert restored_epoch({}) is None  # no summary.json: the model holds the last epoch


def test_tags_carry_the_verdict_and_action_under_fixed_names():
    d = diagnose(scores(0.6, 1.2), scores(0.4, 1.6), None, T)
    assert d.tags() == {"fit": "underfitting", "fit.action": ACTIONS[UNDERFITTING]}


def test_low_training_accuracy_is_underfitting_even_with_a_gap():
    d = diagnose(scores(0.6, 1.2), scores(0.4, 1.6), None, T)
    assert d.verdict == UNDERFITTING
    assert d.action == ACTIONS[UNDERFITTING]
    assert "0.6000 is below the floor evaluate.fit.min_train_accuracy=0.9" in d.reasons[0]


def test_accuracy_gap_alone_is_overfitting():
    d = diagnose(scores(0.99, 0.05), scores(0.90, 0.10), None, T)
    assert d.verdict == OVERFITTING
    assert d.accuracy_gap == pytest.approx(0.09)
    assert any("max_accuracy_gap" in r for r in d.reasons)


def test_loss_gap_alone_is_overfitting():
    d = diagnose(scores(0.99, 0.02), scores(0.97, 0.30), None, T)
    assert d.verdict == OVERFITTING
    assert d.loss_gap == pytest.approx(0.28)
    assert [r for r in d.reasons if "max_loss_gap" in r]


def test_small_gaps_are_a_good_fit_and_metrics_carry_the_verdict():
    d = diagnose(scores(0.98, 0.06), scores(0.96, 0.12), None, T)
    assert d.verdict == GOOD_FIT
    m = d.metrics()
    assert m["verdict"] == "good fit" and m["overfitting"] == 0 and m["underfitting"] == 0
    assert "best_epoch" not in m  # no history given


def test_val_loss_rising_while_train_loss_falls_is_overfitting():
    history = {
        "epoch": [0, 1, 2, 3, 4],
        "loss": [1.0, 0.5, 0.3, 0.2, 0.1],
        "val_loss": [1.0, 0.4, 0.35, 0.45, 0.50],
    }
    e = epoch_evidence(history)
    assert (e.best_epoch, e.last_epoch) == (3, 5)  # counted from 1
    assert e.val_loss_rise == pytest.approx(0.15)
    assert e.train_loss_change == pytest.approx(-0.2)
    d = diagnose(scores(0.97, 0.1), scores(0.95, 0.2), history, T)
    assert d.verdict == OVERFITTING
    assert any("rose 0.1500 after its best at epoch 3" in r for r in d.reasons)
    assert d.metrics()["best_epoch"] == 3


def test_weights_restored_by_early_stopping_are_judged_at_their_epoch():
    history = {
        "epoch": [1, 2, 3, 4, 5],
        "loss": [1.0, 0.5, 0.3, 0.2, 0.1],
        "val_loss": [1.0, 0.4, 0.35, 0.45, 0.50],
    }
    d = diagnose(scores(0.97, 0.1), scores(0.95, 0.2), history, T, model_epoch=3)
    assert d.verdict == GOOD_FIT, d.summary()
    assert (d.epochs.best_epoch, d.epochs.last_epoch, d.epochs.epochs_run) == (3, 3, 5)
    assert d.epochs.val_loss_rise == 0.0
    assert "weights restored from epoch 3 of 5" in d.summary()


def test_val_loss_rise_with_train_loss_rising_too_is_not_overfitting():
    # Both losses rise together (e.g. a too-high learning rate): not the overfitting pattern.
    history = {"loss": [0.3, 0.2, 0.4], "val_loss": [0.3, 0.2, 0.45]}
    d = diagnose(scores(0.97, 0.1), scores(0.95, 0.2), history, T)
    assert d.verdict == GOOD_FIT
    assert d.epochs.best_epoch == 2  # epochs counted from 1 without an epoch column


def test_missing_scores_are_named():
    with pytest.raises(ValueError, match="val scores lack loss"):
        diagnose(scores(0.9, 0.1), {"accuracy": 0.9}, None, T)


def test_summary_mentions_verdict_evidence_and_action():
    d = diagnose(scores(0.99, 0.02), scores(0.97, 0.30), None, T)
    text = d.summary()
    assert text.startswith("fit: overfitting")
    assert "action: Regularise" in text


# --- Real trainings on scikit-learn's bundled digits (small and fast) ---------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, y = data.data.astype("float32"), data.target.astype("int64")
    x_tr, x_rest, y_tr, y_rest = train_test_split(x, y, test_size=0.3, random_state=42, stratify=y)
    x_va, _, y_va, _ = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=42, stratify=y_rest
    )
    return x_tr, y_tr, x_va, y_va


def train_and_diagnose(digits, params, subset=None, noise=0.0):
    """Train with the train stage's own ``nnops.train.fit`` as ``params`` say, then diagnose."""
    from nnops import scoring as ev
    from nnops.distribute import configure_runtime
    from nnops.train import TrainData, fit

    x_tr, y_tr, x_va, y_va = digits
    rng = np.random.default_rng(0)
    if subset:
        idx = rng.choice(len(x_tr), subset, replace=False)
        x_tr, y_tr = x_tr[idx], y_tr[idx].copy()
    if noise:
        flip = rng.random(len(y_tr)) < noise
        y_tr[flip] = rng.integers(0, 10, flip.sum())
    spec = {"method": "rescale", "scale": 1 / 16, "offset": 0.0}
    data = TrainData(x_tr, y_tr, x_va, y_va, 10, spec)
    model, result = fit(data, params, configure_runtime(params), backup_dir=None)
    history = {key: [row[key] for row in result.history] for key in result.history[0]}
    names = [str(i) for i in range(10)]
    train = ev.score_split(y_tr, ev.predict_proba(model, x_tr), names)
    val = ev.score_split(y_va, ev.predict_proba(model, x_va), names)
    return diagnose(train.headline(), val.headline(), history, section("evaluate.fit"))


def layers(*units):
    return tuple(HiddenLayer(units=u, activation="relu", dropout=0.0) for u in units)


def test_tiny_model_trained_briefly_underfits(digits):
    d = train_and_diagnose(digits, section("train", hidden_layers=layers(2), epochs=1))
    assert d.verdict == UNDERFITTING, d.summary()
    assert d.train_accuracy < 0.9


def test_large_model_on_small_noisy_subset_trained_long_overfits(digits):
    params = section(
        "train",
        hidden_layers=layers(256, 256),
        epochs=60,
        batch_size=16,
        learning_rate=0.003,
        l2=0.0,
    )
    d = train_and_diagnose(digits, params, subset=120, noise=0.3)
    assert d.verdict == OVERFITTING, d.summary()
    assert d.accuracy_gap > 0.05
    assert d.epochs.best_epoch < d.epochs.last_epoch
    assert d.epochs.train_loss_change < 0


def test_default_model_on_digits_is_a_good_fit(digits):
    d = train_and_diagnose(digits, section("train"))  # the project's defaults: 64-64, 20 epochs
    assert d.verdict == GOOD_FIT, d.summary()
    assert d.train_accuracy >= 0.9


def test_a_small_validation_split_says_the_verdict_rests_on_little_evidence():
    """42 validation rows (penguins): 0.95 is known only to about +/-0.066, wider than the
    0.05 gap limit, so the verdict carries that caveat and metrics.json the margin."""
    d = diagnose(scores(0.99, 0.05), scores(0.93, 0.20), None, T, val_rows=42)
    assert d.verdict == OVERFITTING
    assert d.reasons[-1].startswith(
        "weak evidence: the validation split holds 42 rows, so its accuracy is known only to "
        "+/-0.077 (95%), wider than evaluate.fit.max_accuracy_gap=0.05"
    )
    assert d.metrics()["val_accuracy_margin"] == pytest.approx(1.96 * (0.93 * 0.07 / 42) ** 0.5)
    # 4 rows at 100%: no false certainty
    assert diagnose(scores(1.0, 0.01), scores(1.0, 0.02), None, T, val_rows=4).metrics()[
        "val_accuracy_margin"
    ] == pytest.approx(0.25)
    large = diagnose(scores(0.99, 0.05), scores(0.93, 0.20), None, T, val_rows=5000)
    assert not any(r.startswith("weak evidence") for r in large.reasons)


def test_overfitting_still_improving_at_the_last_epoch_is_not_told_to_stop_earlier():
    history = {"loss": [0.9, 0.5, 0.2], "val_loss": [1.0, 0.7, 0.6]}
    d = diagnose(scores(0.99, 0.05), scores(0.90, 0.60), history, T)
    assert d.verdict == OVERFITTING and d.epochs.best_epoch == d.epochs.last_epoch == 3
    assert "fewer epochs would not help" in d.action and "lower train.epochs" not in d.action
    rising = {"loss": [0.9, 0.5, 0.2], "val_loss": [1.0, 0.5, 0.7]}
    assert (
        diagnose(scores(0.99, 0.05), scores(0.90, 0.60), rising, T).action == (ACTIONS[OVERFITTING])
    )


def test_a_diverged_run_is_told_to_lower_the_learning_rate_not_raise_it():
    """learning_rate=10: training loss 9.959e+04 at chance accuracy; the underfitting action
    said to raise train.learning_rate."""
    d = diagnose(scores(0.10, 9.959e4), scores(0.10, 9.9e4), None, T)
    assert d.verdict == UNDERFITTING
    assert d.action.startswith("Training is unstable: lower train.learning_rate")
    assert "far above any guess's" in d.reasons[-1]
    assert diagnose(scores(0.6, 1.2), scores(0.4, 1.6), None, T).action == ACTIONS[UNDERFITTING]
