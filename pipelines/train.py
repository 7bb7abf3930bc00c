"""DVC stage ``train``: fit the MLP on data/processed, resumably, and track the run in MLflow."""

from __future__ import annotations

import argparse
import sys

from nnops import catalog
from nnops.config import Params
from nnops.stage import run_stage


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import distribute, tracking

    # Only the chief of a multi-worker cluster tracks; connect first to fail fast, before TF.
    uri = tracking.connect(params.mlflow) if distribute.is_chief(params.train) else None
    distribute.import_tensorflow()
    from nnops import train

    train.train_stage(params, uri, args.data, args.out, args.reports)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(catalog.PROCESSED_DIR), help="preprocess's output")
    parser.add_argument("--out", default=str(catalog.MODELS_DIR), help="model, run.json, backup")
    parser.add_argument(
        "--reports", default=str(catalog.TRAIN_REPORTS), help="history.csv and summary.json"
    )
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("train", main, build_parser()))
