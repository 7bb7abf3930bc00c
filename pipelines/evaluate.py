"""evaluate stage: score the model on every split, diagnose its fit, write DVC metrics and plots."""

from __future__ import annotations

import argparse
import sys

from nnops import catalog
from nnops.config import Params
from nnops.stage import run_stage


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import evaluate as ev

    inputs = ev.read_inputs(args.data, args.history, args.summary, args.model, args.run)
    model = catalog.load_model(args.model)
    curve = None
    if params.evaluate.learning_curve:  # retrains, so only then is the training code imported
        from nnops.learning_curve import training_size_curve

        curve = training_size_curve(params.train, params.evaluate.learning_curve, inputs)
    result = ev.evaluate(model, inputs, params.evaluate.fit, curve)
    files = ev.write_outputs(args.out, result, inputs)
    ev.log_to_mlflow(inputs.run, params.mlflow.connect_timeout_s, result, files)
    print(result.fit.summary())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=str(catalog.MODEL), help="the trained Keras model")
    p.add_argument("--run", default=str(catalog.RUN_INFO), help="the MLflow run of train")
    p.add_argument("--data", default=str(catalog.PROCESSED_DIR), help="the processed splits")
    p.add_argument("--history", default=str(catalog.HISTORY_CSV), help="per-epoch history")
    p.add_argument("--summary", default=str(catalog.TRAIN_SUMMARY), help="train's summary")
    p.add_argument("--out", default=str(catalog.REPORTS_DIR), help="metrics, plots, predictions")
    return p


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main, build_parser()))
