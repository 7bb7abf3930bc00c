"""DVC stage ``train``: fit the MLP on data/processed, resumably, and track the run in MLflow."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nnops.config import Params
from nnops.stage import run_stage

log = logging.getLogger("nnops.train")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import distribute, tracking

    p, out, reports = params.train, Path(args.out), Path(args.reports)
    # Only the chief of a multi-worker cluster tracks; connect first to fail fast, before TF.
    uri = tracking.connect(params.mlflow) if distribute.is_chief(p) else None
    distribute.import_tensorflow()
    from nnops import train
    from nnops.io import write_json

    data, meta, x_pre = train.load_processed(args.data)
    runtime = distribute.configure_runtime(p)  # before any other TensorFlow op
    spec_file = f"{args.data}/preprocessing.json"
    train.check_preprocessing(data.preprocessing, data.x_train, x_pre, spec_file)
    backup, state = train.prepare_backup(out / "backup", p, meta, data)
    run = train.TrackedRun.start(uri, params, meta, runtime, backup, state) if uri else None
    try:
        model, result = train.fit(data, p, runtime, backup, run.callbacks() if run else [])
        summary = train.summary(result, runtime, p, model, data)
        train.save_model(model, out / "model.keras")
        train.write_history_csv(reports / "history.csv", result.history)
        write_json(reports / "summary.json", summary)
        if run:
            files = {"validation": [Path(args.validation) / "validation.json"],
                     "train": [reports / "history.csv", reports / "summary.json"]}  # fmt: skip
            run.finish(model, data, result, summary, files, args.data, meta, out / "run.json")
    except BaseException as exc:  # a signal ends the run KILLED, an error FAILED
        if run:
            tracking.end_interrupted(run.info, exc, max(run.logger.logged, default=0))
        raise
    train.clear_backup(backup)
    log.info("%s; best epoch %s -> %s", train.describe(result, summary), result.best_epoch, out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="data/processed", help="the preprocess stage's output")
    parser.add_argument("--validation", default="reports/validation", help="validate's reports")
    parser.add_argument("--out", default="models", help="model, run.json and the backup")
    parser.add_argument("--reports", default="reports/train", help="history.csv and summary.json")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("train", main, build_parser()))
