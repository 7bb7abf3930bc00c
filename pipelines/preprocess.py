"""DVC stage ``preprocess``: split and scale the validated raw data into ``data/processed``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnops import catalog
from nnops.config import Params
from nnops.stage import run_stage


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import preprocess
    from nnops.io import read_json
    from nnops.raw import read_raw

    raw = read_raw(args.raw)
    report_path = Path(args.validation) / catalog.VALIDATION_JSON
    report = read_json(report_path)
    arrays, spec, meta = preprocess.preprocess(
        raw.frame, raw.meta, report, str(report_path), params
    )
    preprocess.write_processed(args.out, arrays, spec, meta)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default=str(catalog.RAW_DIR), help="the raw data directory")
    parser.add_argument(
        "--validation", default=str(catalog.VALIDATION_DIR), help="validate's reports"
    )
    parser.add_argument(
        "--out", default=str(catalog.PROCESSED_DIR), help="the processed data directory"
    )
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("preprocess", main, build_parser()))
