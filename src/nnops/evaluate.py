"""Evaluate a trained model: score every split once, diagnose its fit, write metrics and plots.

Scores come from :mod:`nnops.scoring` (every metric from ``sklearn.metrics``), the verdict from
:mod:`nnops.diagnose`, figures from :mod:`nnops.plots`. :func:`evaluate` takes arrays and returns
data; the file edges (``read_inputs``, ``write_outputs``, ``log_to_mlflow``; the model through
``catalog.load_model``) read and write the stage's files and the MLflow run. The optional
training-size learning curve lives in :mod:`nnops.learning_curve` (it retrains, so only the
stage imports it, when asked to).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnops import catalog, plots
from nnops.config import FitThresholds
from nnops.diagnose import Diagnosis, diagnose, restored_epoch
from nnops.errors import NnopsError
from nnops.io import atomic_path, file_sha256, read_json, write_json
from nnops.scoring import SPLITS, SplitScores, confusion_rows, predict_proba, score_split
from nnops.tracking import RunInfo, read_run_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationInputs:
    """Everything the evaluate stage reads besides the model itself."""

    class_names: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (raw features, class indices)
    history: dict[str, list[float]]
    summary: dict[str, Any]  # the train stage's summary.json ({} when absent)
    preprocessing: dict[str, Any]
    data_hash: str
    model_sha256: str
    run: RunInfo  # the training run (models/run.json) that evaluate logs into


@dataclass(frozen=True)
class Evaluation:
    """The scores of each split, the fit verdict and what goes into the stage's files."""

    scores: dict[str, SplitScores]
    test_proba: np.ndarray
    fit: Diagnosis
    curve: list[dict[str, float]] | None  # the learning curve, when evaluate.learning_curve is set
    metrics: dict[str, Any]
    report: dict[str, Any]


def curve_point(
    fraction: float, train_size: int, train: SplitScores, val: SplitScores
) -> dict[str, float]:
    """One point of the training-size learning curve (a row of ``learning_curve.csv``).

    Args:
        fraction: the share of the training data used.
        train_size: the number of training rows used.
        train: scores on those training rows.
        val: scores on the validation split.
    """
    return {
        "fraction": float(fraction),
        "train_size": int(train_size),
        "train_accuracy": train.accuracy,
        "val_accuracy": val.accuracy,
        "train_loss": train.loss,
        "val_loss": val.loss,
    }


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested numeric metrics to dotted names (``test.accuracy``), as DVC shows them.

    Args:
        metrics: the nested metrics, e.g. the content of ``reports/metrics.json``.
        prefix: the dotted prefix of this level.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def evaluation_report(
    scores: Mapping[str, SplitScores],
    class_names: Sequence[str],
    fit: Diagnosis,
    curve: list[dict[str, float]] | None,
) -> dict[str, Any]:
    """Assemble ``reports/evaluation.json``: test per-class table and confusion matrix up front.

    Args:
        scores: the scores of each split.
        class_names: the name of each class index.
        fit: the diagnosis.
        curve: the training-size learning curve rows, or None when it was not computed.
    """
    test = scores["test"]
    return {
        "class_names": [str(c) for c in class_names],
        "per_class": test.per_class,
        "confusion_matrix": test.confusion_matrix,
        "verdict": fit.verdict,
        "evidence": list(fit.reasons),
        "recommended_action": fit.action,
        "fit": fit.to_dict(),
        "splits": {
            name: {
                **s.headline(),
                "n": s.n,
                "per_class": s.per_class,
                "confusion_matrix": s.confusion_matrix,
            }
            for name, s in scores.items()
        },
        "learning_curve": curve,
    }


def evaluate(
    model: Any,
    inputs: EvaluationInputs,
    thresholds: FitThresholds,
    curve: list[dict[str, float]] | None = None,
) -> Evaluation:
    """Score each split once, diagnose the fit and assemble the metrics and the report.

    Args:
        model: the trained Keras model (raw input in, probabilities out).
        inputs: what :func:`read_inputs` read.
        thresholds: the ``evaluate.fit`` params.
        curve: the training-size learning curve, if one was computed.
    """
    names = inputs.class_names
    probas = {s: predict_proba(model, x) for s, (x, _) in inputs.splits.items()}
    scores = {s: score_split(inputs.splits[s][1], probas[s], names) for s in SPLITS}
    fit = diagnose(
        scores["train"].headline(),
        scores["val"].headline(),
        inputs.history,
        thresholds,
        model_epoch=restored_epoch(inputs.summary),
        val_rows=len(inputs.splits["val"][1]),
    )
    metrics = {s: scores[s].headline() for s in SPLITS} | {"fit": fit.metrics()}
    report = evaluation_report(scores, names, fit, curve)
    return Evaluation(scores, probas["test"], fit, curve, metrics, report)


# --- File edges used by pipelines/evaluate.py ------------------------------------------------


def read_inputs(
    data: str | Path, history: str | Path, summary: str | Path, model: str | Path, run: str | Path
) -> EvaluationInputs:
    """Read every input of the stage, so that a missing or bad file fails before TensorFlow.

    Args:
        data: ``data/processed``.
        history: ``reports/train/history.csv``.
        summary: ``reports/train/summary.json`` (optional).
        model: ``models/model.keras`` (only checked and hashed here).
        run: ``models/run.json``.
    """
    data = Path(data)
    meta = read_json(data / catalog.PROCESSED_META)
    class_names = [str(c) for c in meta.get("class_names") or []]
    if len(class_names) < 2:
        raise NnopsError(
            f"{data / catalog.PROCESSED_META}: class_names must list at least two classes"
        )
    splits = {s: catalog.read_split(catalog.split_path(data, s)) for s in SPLITS}
    if not Path(model).is_file():
        raise NnopsError(f"{model}: model file not found (did the train stage run?)")
    spec_file = data / catalog.PREPROCESSING_JSON
    return EvaluationInputs(
        class_names=class_names,
        splits=splits,
        history=catalog.read_history(history) or {},
        summary=read_json(summary) if Path(summary).is_file() else {},
        preprocessing=read_json(spec_file) if spec_file.is_file() else {},
        data_hash=str(meta.get("data_hash", "")),
        model_sha256=file_sha256(model),
        run=read_run_info(run),
    )


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def write_plots(
    out: str | Path,
    history: Mapping[str, Sequence[float]],
    test: SplitScores,
    class_names: Sequence[str],
    curve: list[dict[str, float]] | None,
    y_test: np.ndarray,
    y_pred: np.ndarray,
) -> list[Path]:
    """Write the DVC plot files and PNG figures; return the PNG paths.

    Args:
        out: the plots directory (``reports/plots``).
        history: per-epoch columns from the train stage.
        test: the test split's scores.
        class_names: the name of each class index.
        curve: the training-size learning curve rows (a PNG is drawn from two points on).
        y_test: true test class indices.
        y_pred: predicted test class indices.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(
        out / "confusion_test.csv",
        confusion_rows(y_test, y_pred, class_names),
        ("actual", "predicted"),
    )
    epochs = history.get("epoch", [])
    offset = 1 if epochs and epochs[0] == 0 else 0
    x = [int(e) + offset for e in epochs]
    figures = []
    for metric, label in (("loss", "Loss"), ("accuracy", "Accuracy")):
        if metric in history and f"val_{metric}" in history:
            fig = plots.curve_figure(
                x,
                {"train": history[metric], "validation": history[f"val_{metric}"]},
                f"{label} per epoch (train vs validation)",
                "epoch",
                metric,
            )
            figures.append(plots.save_png(fig, out / f"{metric}.png"))
    fig = plots.confusion_figure(test.confusion_matrix, class_names, "Test confusion matrix")
    figures.append(plots.save_png(fig, out / "confusion_test.png"))
    if curve:
        _write_csv(out / "learning_curve.csv", curve, list(curve[0]))
    if curve and len(curve) > 1:
        fig = plots.curve_figure(
            [r["train_size"] for r in curve],
            {
                "train": [r["train_accuracy"] for r in curve],
                "validation": [r["val_accuracy"] for r in curve],
            },
            "Accuracy against training-set size",
            "training rows",
            "accuracy",
        )
        figures.append(plots.save_png(fig, out / "learning_curve.png"))
    return figures


def write_outputs(out: str | Path, result: Evaluation, inputs: EvaluationInputs) -> list[Path]:
    """Write plots, ``evaluation.json``, ``metrics.json`` and the test predictions handed to
    explain; return the files that go to MLflow (figures, evaluation and metrics).

    Args:
        out: the reports directory (``reports``).
        result: what :func:`evaluate` returned.
        inputs: what :func:`read_inputs` read.
    """
    out = Path(out)
    y_test = inputs.splits["test"][1]
    # Without evaluate.learning_curve the plot holds one point: the evaluated model itself.
    points = result.curve or [
        curve_point(
            1.0, len(inputs.splits["train"][1]), result.scores["train"], result.scores["val"]
        )
    ]
    figures = write_plots(
        out / catalog.PLOTS_DIR.name,
        inputs.history,
        result.scores["test"],
        inputs.class_names,
        points,
        y_test,
        result.test_proba.argmax(axis=1),
    )
    evaluation, metrics = out / catalog.EVALUATION_JSON.name, out / catalog.METRICS_JSON.name
    write_json(evaluation, result.report)
    write_json(metrics, result.metrics)
    catalog.write_predictions(
        out / catalog.PREDICTIONS_NPZ.name, result.test_proba, inputs.model_sha256, inputs.data_hash
    )
    return [*figures, evaluation, metrics]


def log_to_mlflow(
    run_info: RunInfo, timeout_s: float, result: Evaluation, files: Sequence[Path]
) -> None:
    """Log the metrics, the fit tags and the files to the training run.

    Args:
        run_info: the training run (``EvaluationInputs.run``).
        timeout_s: ``mlflow.connect_timeout_s``.
        result: what :func:`evaluate` returned.
        files: the files to attach under ``evaluation/``.
    """
    from nnops.tracking import resume_run

    with resume_run(run_info, timeout_s) as run:
        import mlflow

        mlflow.log_metrics(flat_metrics(result.metrics))
        mlflow.set_tags(result.fit.tags())
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        log.info(
            "logged metrics, fit tags and %d files to MLflow run %s", len(files), run.info.run_id
        )
