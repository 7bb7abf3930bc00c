"""DVC stage ``validate``: check ``data/raw`` with Great Expectations; fail on any breach."""

from __future__ import annotations

import argparse
import sys

from nnops import catalog
from nnops.config import Params
from nnops.stage import run_stage


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import validate
    from nnops.raw import read_raw
    from nnops.validation_report import failure_lines

    validate.import_gx_in_background()  # overlaps the slow import with reading the data
    raw = read_raw(args.raw)
    result = validate.validate(raw.frame, raw.meta, params)
    validate.write_reports(result, args.out)
    for line in failure_lines(result.report):
        print(f"validate: {line}", file=sys.stderr)
    validate.require_success(result.report, args.raw, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default=str(catalog.RAW_DIR), help="the raw data directory")
    parser.add_argument("--out", default=str(catalog.VALIDATION_DIR), help="the report directory")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("validate", main, build_parser()))
