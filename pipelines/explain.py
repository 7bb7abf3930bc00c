"""explain stage: what the model looks at and where it fails (slices, weak classes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnops import catalog
from nnops.config import Params
from nnops.stage import run_stage


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import explain as ex
    from nnops.io import read_json

    meta = read_json(Path(args.data) / catalog.PROCESSED_META)
    test = ex.read_test(catalog.split_path(args.data, "test"), params.explain.slice_by)
    model, probs = ex.model_and_predictions(
        args.model, args.predictions, test, meta, params.explain.enabled
    )
    result = ex.explain_test_set(model, test, probs, meta, params.explain, seed=params.train.seed)
    ex.write_files(args.out, result.files)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=str(catalog.MODEL), help="the trained Keras model")
    p.add_argument("--data", default=str(catalog.PROCESSED_DIR), help="the processed data")
    p.add_argument(
        "--predictions", default=str(catalog.PREDICTIONS_NPZ), help="evaluate's test predictions"
    )
    p.add_argument("--out", default=str(catalog.EXPLAIN_DIR), help="where figures and tables go")
    return p


if __name__ == "__main__":
    sys.exit(run_stage("explain", main, build_parser()))
