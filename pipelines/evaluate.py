"""evaluate stage: score the model on every split, diagnose its fit, write DVC metrics and plots."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from nnops import evaluate as ev
from nnops import scoring
from nnops.catalog import read_split, split_path
from nnops.config import Params
from nnops.diagnose import diagnose
from nnops.errors import NnopsError
from nnops.io import read_json, write_json
from nnops.stage import run_stage

log = logging.getLogger("nnops.evaluate")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops.tracking import read_run_info, resume_run

    data, out, plots = Path(args.data), Path(args.out), Path(args.out) / "plots"
    # Read every input before the heavy imports, so that a missing file fails at once.
    class_names = [str(c) for c in read_json(data / "meta.json").get("class_names") or []]
    if len(class_names) < 2:
        raise NnopsError(f"{data / 'meta.json'}: class_names must list at least two classes")
    splits = {s: read_split(split_path(data, s)) for s in scoring.SPLITS}
    history, run_info = ev.read_history(args.history), read_run_info(args.run)
    summary = read_json(args.summary) if Path(args.summary).is_file() else {}
    if not Path(args.model).is_file():
        raise NnopsError(f"{args.model}: model file not found (did the train stage run?)")
    os.environ.setdefault("MPLBACKEND", "Agg")
    from nnops.distribute import import_tensorflow

    import_tensorflow()  # without its C++ start-up noise
    import keras

    model = keras.saving.load_model(args.model, safe_mode=True)
    probas = {s: scoring.predict_proba(model, x) for s, (x, _) in splits.items()}
    scores = {s: scoring.score_split(splits[s][1], probas[s], class_names) for s in scoring.SPLITS}
    restored = summary.get("best_epoch") if summary.get("restored_best_weights") else None
    fit = diagnose(
        scores["train"].headline(),
        scores["val"].headline(),
        history,
        params.evaluate.fit,
        model_epoch=restored,
    )
    curve = None
    if params.evaluate.learning_curve:
        spec = read_json(data / "preprocessing.json")
        fitter = ev.keras_fitter(params.train, spec, len(class_names), splits["val"])
        curve = ev.learning_curve(
            fitter,
            splits["train"],
            splits["val"],
            params.evaluate.learning_curve,
            class_names,
            params.train.seed,
        )

    metrics = {s: scores[s].headline() for s in scoring.SPLITS} | {"fit": fit.metrics()}
    report = ev.evaluation_report(scores, class_names, fit, curve)
    y_test, p_test = splits["test"][1], probas["test"].argmax(axis=1)
    # Without evaluate.learning_curve the plot holds one point: the evaluated model itself.
    points = curve or [ev.curve_point(1.0, len(splits["train"][1]), scores["train"], scores["val"])]
    figures = ev.write_plots(plots, history, scores["test"], class_names, points, y_test, p_test)
    write_json(out / "evaluation.json", report)
    write_json(out / "metrics.json", metrics)

    with resume_run(run_info, params.mlflow.connect_timeout_s) as run:
        import mlflow

        mlflow.log_metrics(ev.flat_metrics(metrics))
        mlflow.set_tags({"fit": fit.verdict, "fit.action": fit.action})
        for path in [*figures, out / "evaluation.json", out / "metrics.json"]:
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        log.info(
            "logged metrics, fit tag and %d figures to MLflow run %s", len(figures), run.info.run_id
        )
    print(fit.summary())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="models/model.keras", help="the trained Keras model")
    p.add_argument("--run", default="models/run.json", help="the MLflow run written by train")
    p.add_argument("--data", default="data/processed", help="the processed splits")
    p.add_argument("--history", default="reports/train/history.csv", help="per-epoch history")
    p.add_argument("--summary", default="reports/train/summary.json", help="train's summary")
    p.add_argument("--out", default="reports", help="where metrics, evaluation and plots go")
    return p


if __name__ == "__main__":
    raise SystemExit(run_stage("evaluate", main, parser()))
