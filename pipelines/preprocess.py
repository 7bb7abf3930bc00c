"""DVC stage ``preprocess``: split and scale the validated raw data into ``data/processed``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nnops.config import Params
from nnops.stage import run_stage

log = logging.getLogger("nnops.preprocess")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import preprocess
    from nnops.ingest import read_raw
    from nnops.io import read_json

    raw = read_raw(args.raw)
    report_path = Path(args.validation) / "validation.json"
    preprocess.check_validation(read_json(report_path), raw.meta, str(report_path))
    slices = params.data.exclude_columns
    arrays, spec = preprocess.make_splits(
        raw.frame, raw.meta, params.split, params.preprocess.scaling, slices
    )
    meta = preprocess.processed_meta(raw.meta, arrays, spec, slices)
    preprocess.write_processed(args.out, arrays, spec, meta)
    for name, rows in meta["test_only_classes"].items():
        log.warning(
            "class %r has %d test row(s) but no training rows: the model cannot learn it, so "
            "those rows all count as errors in test accuracy; add training rows for it",
            name, rows,
        )  # fmt: skip
    log.info("%s scaling, splits %s -> %s", spec["method"], meta["splits"], args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", help="the raw data directory")
    parser.add_argument("--validation", default="reports/validation", help="validate's reports")
    parser.add_argument("--out", default="data/processed", help="the processed data directory")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("preprocess", main, build_parser()))
