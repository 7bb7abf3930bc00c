"""DVC stage ``validate``: check ``data/raw`` with Great Expectations; fail on any breach."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nnops.config import Params
from nnops.errors import NnopsError
from nnops.stage import run_stage

log = logging.getLogger("nnops.validate")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import validate
    from nnops.ingest import read_raw
    from nnops.io import write_json, write_text

    validate.import_gx_in_background()  # overlaps the slow import with reading the data
    raw = read_raw(args.raw)
    prof = validate.profile(raw.frame, raw.meta, params.split, params.validation)
    checks = validate.build_checks(prof, params.validation, raw.meta)
    report = validate.summarise(prof, checks, validate.run_suites(prof, checks), raw.meta)
    out = Path(args.out)
    write_json(out / "validation.json", report)
    ref = validate.reference_profile(prof, params.validation, raw.meta, params.data.label_column)
    write_text(out / "profile.json", validate.profile_json(ref))
    write_text(out / "validation.html", validate.render_html(report))
    for line in validate.failure_lines(report):
        print(f"validate: {line}", file=sys.stderr)
    if not report["success"]:
        raise NnopsError(
            f"{report['n_failed']} of {report['n_expectations']} expectations failed on "
            f"{args.raw}; see {out / 'validation.html'}"
        )
    log.info("all %d expectations passed -> %s", report["n_expectations"], out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", help="the raw data directory")
    parser.add_argument("--out", default="reports/validation", help="the report directory")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("validate", main, build_parser()))
