"""register stage: register the run's model, promote it to @champion only through the gate."""

from __future__ import annotations

import argparse
import logging

from nnops import catalog
from nnops import register as reg
from nnops.config import Params
from nnops.io import read_json, write_json
from nnops.stage import run_stage

log = logging.getLogger("nnops.register")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops.tracking import read_run_info

    info, metrics = read_run_info(args.run), read_json(args.metrics)
    test = catalog.read_split(catalog.split_path(args.data, "test"))
    meta = read_json(f"{args.data}/{catalog.PROCESSED_META}")
    record = reg.register_run(info, metrics, test, meta, params.registry, params.mlflow)
    write_json(args.out, record)
    print(f"register: {record['model_name']} version {record['version']}: {record['reason']}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", default=str(catalog.RUN_INFO), help="the MLflow run written by train")
    p.add_argument("--metrics", default=str(catalog.METRICS_JSON), help="evaluate's metrics")
    p.add_argument("--data", default=str(catalog.PROCESSED_DIR), help="processed splits and meta")
    p.add_argument("--out", default=str(catalog.REGISTRY_JSON), help="the decision record")
    return p


if __name__ == "__main__":
    raise SystemExit(run_stage("register", main, build_parser()))
