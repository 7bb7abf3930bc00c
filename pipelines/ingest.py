"""DVC stage ``ingest``: read ``data.source`` into ``data/raw`` (data.parquet + meta.json)."""

from __future__ import annotations

import argparse
import logging
import sys

from nnops.config import Params
from nnops.stage import run_stage

log = logging.getLogger("nnops.ingest")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import ingest

    raw = ingest.load(params.data)
    ingest.write_raw(raw, args.out)
    meta = raw.meta
    log.info(
        "%s: %d rows, %d features, %d classes, own test split: %s -> %s",
        meta["source"],
        meta["n_rows"],
        meta["n_features"],
        len(meta["class_names"]),
        meta["has_test_split"],
        args.out,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/raw", help="the raw data directory")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("ingest", main, build_parser()))
