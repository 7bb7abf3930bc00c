"""DVC stage ``check_params``: check the whole params.yaml before any other stage runs.

Each stage reruns only for the params keys it reads, so a key no stage reads (a misspelt
section such as ``trian:``, or ``dvc exp run -S +foo.bar=1``) would leave ``dvc repro`` "up to
date" and the change silently ignored. This stage tracks every key of params.yaml, so any edit
reruns it, and it fails on what the params check refuses. Its output never changes, so the
stages after it rerun only for their own keys.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnops import catalog
from nnops.config import Params
from nnops.stage import run_stage

MARKER = "params.yaml passed the params check (this file's content never changes)\n"


def main(args: argparse.Namespace, params: Params) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(MARKER, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(catalog.PARAMS_CHECKED), help="the marker file")
    return parser


if __name__ == "__main__":
    sys.exit(run_stage("check_params", main, build_parser()))
