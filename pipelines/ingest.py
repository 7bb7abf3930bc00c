"""DVC stage ``ingest``: read ``data.source`` into ``data/raw`` (data.parquet + meta.json)."""

from __future__ import annotations

import argparse
import sys

from nnops import catalog
from nnops.config import Params
from nnops.stage import run_stage


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import ingest
    from nnops.raw import write_raw

    raw = ingest.load(params.data)
    write_raw(raw, args.out)
    ingest.log_summary(raw, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(catalog.RAW_DIR), help="the raw data directory")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("ingest", main, build_parser()))
