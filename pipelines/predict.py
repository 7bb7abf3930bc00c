"""Batch prediction with the project's params: score a CSV or npz with a model URI, alias or file.

python pipelines/predict.py --model models:/nnops-mlp@champion --input rows.csv --out preds.csv
(the same as the ``nnops-predict`` console script, with the tracking store taken from params.yaml).
"""

from __future__ import annotations

import argparse

from nnops.config import Params
from nnops.predict import parser, predict_file
from nnops.stage import run_stage


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops.tracking import resolve_tracking_uri

    uri = args.tracking_uri or resolve_tracking_uri(params.mlflow)
    meta = args.meta or (
        "data/processed/meta.json" if _exists("data/processed/meta.json") else None
    )
    table = predict_file(args.model, args.input, args.out, uri, meta, args.key, not args.no_header)
    print(f"predict: {len(table)} rows -> {args.out}")


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


if __name__ == "__main__":
    raise SystemExit(run_stage("predict", main, parser()))
