"""Over- and underfitting diagnosis: a verdict, the evidence behind it and one action to take.

Pure functions only: they take the scores the evaluate stage computed and the per-epoch history the
train stage wrote, and return data. Thresholds come from ``params.evaluate.fit``.

Evidence, in the order it is checked:

1. Training accuracy below ``min_train_accuracy``: the model cannot even fit the data it was
   trained on, so it underfits whatever the gap says.
2. Generalisation gap: training minus validation accuracy above ``max_accuracy_gap``, or
   validation minus training loss above ``max_loss_gap``: it overfits.
3. Best epoch against the last: validation loss ended more than ``min_val_loss_rise`` above its
   best while training loss kept falling: it overfits (training went on past the useful point).

Otherwise the fit is good. On a small validation split the verdict says how little it rests on:
its accuracy's 95% margin is named when it is wider than ``max_accuracy_gap``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from nnops.config import FitThresholds

Verdict = Literal["underfitting", "overfitting", "good fit"]

UNDERFITTING: Verdict = "underfitting"
OVERFITTING: Verdict = "overfitting"
GOOD_FIT: Verdict = "good fit"

ACTIONS: dict[Verdict, str] = {
    UNDERFITTING: (
        "Give the model more capacity or more training: add units or layers to "
        "train.hidden_layers, raise train.epochs, or raise train.learning_rate; remove "
        "regularisation (train.l2, dropout) if any is set."
    ),
    OVERFITTING: (
        "Regularise or stop earlier: set dropout in train.hidden_layers or train.l2, turn on "
        "train.early_stopping.enabled, lower train.epochs, or train on more data."
    ),
    GOOD_FIT: (
        "No change needed for fit; compare the test metrics with the current champion before "
        "relying on it."
    ),
}


# Overfitting whose validation loss was still at its best at the last epoch: stopping earlier
# would not help.
STILL_IMPROVING_ACTION = (
    "Regularise: set dropout in train.hidden_layers or train.l2, or train on more data "
    "(validation loss was at its best at the last epoch, so fewer epochs would not help)."
)


# Underfitting with a training loss no sane guess reaches (a uniform guess over 20,000 classes
# scores ln 20000 < 10): the steps were too large, not the model too small.
DIVERGED_LOSS = 10.0
DIVERGED_ACTION = (
    "Training is unstable: lower train.learning_rate (or set train.lr_schedule), then judge the "
    "capacity again; raising it or the epochs would not help."
)


def accuracy_margin(accuracy: float, rows: int) -> float:
    """The 95% margin of an accuracy measured on ``rows`` rows (normal approximation, at least
    one row's worth, so that 4 rows at 100% are not read as certain).

    Args:
        accuracy: the measured accuracy.
        rows: how many rows it was measured on.
    """
    return max(1.96 * math.sqrt(accuracy * (1 - accuracy) / rows), 1 / rows)


# MLflow tags on the training run (``mlflow.search_runs(filter_string="tags.fit = 'good fit'")``).
VERDICT_TAG = "fit"
ACTION_TAG = "fit.action"


def restored_epoch(summary: Mapping[str, Any]) -> int | None:
    """The epoch whose weights the model holds when early stopping restored its best weights,
    else None (the model holds the last epoch's weights).

    Args:
        summary: the train stage's ``reports/train/summary.json`` (empty when absent).
    """
    if summary.get("restored_best_weights") and summary.get("best_epoch") is not None:
        return int(summary["best_epoch"])
    return None


@dataclass(frozen=True)
class EpochEvidence:
    """What the per-epoch history says: where validation loss was best and how far it rose."""

    best_epoch: int
    last_epoch: int
    """The epoch whose weights the model holds: the last one run, or the restored best one."""
    epochs_run: int
    best_val_loss: float
    last_val_loss: float
    val_loss_rise: float
    train_loss_change: float
    """Last minus best-epoch training loss; negative when training loss kept falling."""


@dataclass(frozen=True)
class Diagnosis:
    """The verdict, every number it rests on, the reasons in words and one recommended action."""

    verdict: Verdict
    train_accuracy: float
    val_accuracy: float
    train_loss: float
    val_loss: float
    accuracy_gap: float
    loss_gap: float
    epochs: EpochEvidence | None
    reasons: tuple[str, ...]
    action: str
    thresholds: dict[str, float] = field(default_factory=dict)
    val_accuracy_margin: float | None = None  # 95%, when the validation split's size is known

    def metrics(self) -> dict[str, Any]:
        """Return the flat ``fit`` block of ``reports/metrics.json`` (numbers plus the verdict)."""
        out: dict[str, Any] = {
            "verdict": self.verdict,
            "underfitting": int(self.verdict == UNDERFITTING),
            "overfitting": int(self.verdict == OVERFITTING),
            "accuracy_gap": self.accuracy_gap,
            "loss_gap": self.loss_gap,
        }
        if self.val_accuracy_margin is not None:
            out["val_accuracy_margin"] = self.val_accuracy_margin
        if self.epochs is not None:
            out.update(
                best_epoch=self.epochs.best_epoch,
                last_epoch=self.epochs.last_epoch,
                epochs_run=self.epochs.epochs_run,
                val_loss_rise=self.epochs.val_loss_rise,
                train_loss_change=self.epochs.train_loss_change,
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return everything as plain JSON-ready data."""
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """Return the MLflow tags that carry the verdict on the training run."""
        return {VERDICT_TAG: self.verdict, ACTION_TAG: self.action}

    def summary(self) -> str:
        """Return a few plain lines for the end of the stage's output."""
        lines = [
            f"fit: {self.verdict}",
            f"  train accuracy {self.train_accuracy:.4f}, validation accuracy "
            f"{self.val_accuracy:.4f} (gap {self.accuracy_gap:+.4f})",
            f"  train loss {self.train_loss:.4f}, validation loss {self.val_loss:.4f} "
            f"(gap {self.loss_gap:+.4f})",
        ]
        if self.epochs is not None:
            e = self.epochs
            restored = (
                f" (weights restored from epoch {e.last_epoch} of {e.epochs_run})"
                if e.last_epoch != e.epochs_run
                else ""
            )
            lines.append(
                f"  best validation loss at epoch {e.best_epoch} of {e.last_epoch}{restored}; "
                f"rise since then {e.val_loss_rise:+.4f}, training loss change "
                f"{e.train_loss_change:+.4f}"
            )
        lines.extend(f"  - {reason}" for reason in self.reasons)
        lines.append(f"  action: {self.action}")
        return "\n".join(lines)


def epoch_evidence(
    history: Mapping[str, Sequence[float]], model_epoch: int | None = None
) -> EpochEvidence | None:
    """Find the best validation-loss epoch and how validation and training loss moved after it.

    Args:
        history: per-epoch columns as written by the train stage (``epoch``, ``loss``,
            ``val_loss``); epochs are counted from 1 when no ``epoch`` column is given.
        model_epoch: the epoch whose weights the model holds when early stopping restored
            them (counted from 1); epochs after it do not describe the evaluated model.
    """
    val_loss = [float(v) for v in history.get("val_loss", ())]
    loss = [float(v) for v in history.get("loss", ())]
    if not val_loss or len(loss) != len(val_loss):
        return None
    raw = [int(e) for e in history.get("epoch", range(1, len(val_loss) + 1))]
    # Keras' CSVLogger counts from 0; report epochs counted from 1 either way.
    epochs = [e + 1 for e in raw] if raw and raw[0] == 0 else raw
    keep = [i for i, e in enumerate(epochs) if model_epoch is None or e <= model_epoch]
    finite = [i for i in keep if math.isfinite(val_loss[i])]
    if not finite:
        return None
    best = min(finite, key=lambda i: val_loss[i])
    last = keep[-1]
    return EpochEvidence(
        best_epoch=epochs[best],
        last_epoch=epochs[last],
        epochs_run=epochs[-1],
        best_val_loss=val_loss[best],
        last_val_loss=val_loss[last],
        val_loss_rise=val_loss[last] - val_loss[best],
        train_loss_change=loss[last] - loss[best],
    )


def diagnose(
    train: Mapping[str, float],
    val: Mapping[str, float],
    history: Mapping[str, Sequence[float]] | None,
    thresholds: FitThresholds,
    model_epoch: int | None = None,
    val_rows: int | None = None,
) -> Diagnosis:
    """Decide between underfitting, overfitting and a good fit.

    Args:
        train: ``accuracy`` and ``loss`` of the final model on the training split.
        val: the same on the validation split.
        history: per-epoch training history (``loss``, ``val_loss``), or None when unknown.
        thresholds: the ``evaluate.fit`` params.
        model_epoch: the epoch early stopping restored the weights of, if it did.
        val_rows: the validation split's size, for the caveat on a small one.
    """
    for name, scores in (("train", train), ("val", val)):
        missing = [k for k in ("accuracy", "loss") if k not in scores]
        if missing:
            raise ValueError(f"{name} scores lack {', '.join(missing)}; received {dict(scores)}")
    train_acc, val_acc = float(train["accuracy"]), float(val["accuracy"])
    train_loss, val_loss = float(train["loss"]), float(val["loss"])
    accuracy_gap = train_acc - val_acc
    loss_gap = val_loss - train_loss
    epochs = epoch_evidence(history, model_epoch) if history is not None else None

    under: list[str] = []
    over: list[str] = []
    t = thresholds
    if train_acc < t.min_train_accuracy:
        under.append(
            f"training accuracy {train_acc:.4f} is below the floor "
            f"evaluate.fit.min_train_accuracy={t.min_train_accuracy}"
        )
    if accuracy_gap > t.max_accuracy_gap:
        over.append(
            f"training minus validation accuracy {accuracy_gap:.4f} exceeds "
            f"evaluate.fit.max_accuracy_gap={t.max_accuracy_gap}"
        )
    if loss_gap > t.max_loss_gap:
        over.append(
            f"validation minus training loss {loss_gap:.4f} exceeds "
            f"evaluate.fit.max_loss_gap={t.max_loss_gap}"
        )
    rising = epochs is not None and epochs.val_loss_rise > t.min_val_loss_rise
    if rising and epochs.train_loss_change < 0:
        over.append(
            f"validation loss rose {epochs.val_loss_rise:.4f} after its best at epoch "
            f"{epochs.best_epoch} (of {epochs.last_epoch}) while training loss kept falling; "
            f"limit evaluate.fit.min_val_loss_rise={t.min_val_loss_rise}"
        )

    if under:
        verdict, reasons = UNDERFITTING, under
    elif over:
        verdict, reasons = OVERFITTING, over
    else:
        verdict = GOOD_FIT
        reasons = [
            f"training accuracy {train_acc:.4f} reaches the floor {t.min_train_accuracy}, and "
            "the gaps stay within evaluate.fit limits"
        ]
    action = ACTIONS[verdict]
    if verdict == UNDERFITTING and train_loss > DIVERGED_LOSS:
        action = DIVERGED_ACTION
        reasons = [*reasons, f"training loss {train_loss:.4g} is far above any guess's: the "
                             "optimiser's steps are too large"]  # fmt: skip
    if verdict == OVERFITTING and epochs is not None and epochs.best_epoch == epochs.last_epoch:
        action = STILL_IMPROVING_ACTION
    margin = accuracy_margin(val_acc, val_rows) if val_rows else 0.0
    if margin > t.max_accuracy_gap:
        reasons = [*reasons, (
            f"weak evidence: the validation split holds {val_rows} rows, so its accuracy is known "
            f"only to +/-{margin:.3f} (95%), wider than evaluate.fit.max_accuracy_gap="
            f"{t.max_accuracy_gap}; more validation rows (split.val_fraction, or more data) make "
            "the verdict firmer")]  # fmt: skip
    return Diagnosis(
        verdict=verdict,
        train_accuracy=train_acc,
        val_accuracy=val_acc,
        train_loss=train_loss,
        val_loss=val_loss,
        accuracy_gap=accuracy_gap,
        loss_gap=loss_gap,
        epochs=epochs,
        reasons=tuple(reasons),
        action=action,
        thresholds=t.model_dump(),
        val_accuracy_margin=margin if val_rows else None,
    )
