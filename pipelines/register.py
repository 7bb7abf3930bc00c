"""register stage: register the run's model, promote it to @champion only through the gate."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from nnops import register as reg
from nnops.catalog import read_split
from nnops.config import Params
from nnops.errors import NnopsError
from nnops.io import read_json, write_json
from nnops.stage import run_stage

log = logging.getLogger("nnops.register")


def main(args: argparse.Namespace, params: Params) -> None:
    import mlflow

    from nnops.lease import register_lease
    from nnops.tracking import ensure_reachable, read_run_info, resume_run

    p, info, metrics = params.registry, read_run_info(args.run), read_json(args.metrics)
    if not info.model_uri:
        raise NnopsError(f"{args.run}: no model_uri; the train stage must log the model")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or info.tracking_uri
    ensure_reachable(uri, params.mlflow.connect_timeout_s)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    test = read_split(Path(args.data) / "test.npz")
    meta = read_json(Path(args.data) / "meta.json")
    class_names, task = meta.get("class_names"), reg.task_of(meta)
    # One register at a time per store (queued experiments, pipelines on several machines):
    # the champion compared against is still the champion when the alias moves.
    with register_lease(uri, p.model_name):
        version = reg.register_version(client, p.model_name, info.model_uri, info.run_id).version
        record = reg.decide(
            client,
            p.model_name,
            str(version),
            info.run_id,
            metrics,
            p,
            test,
            class_names,
            lambda step: log.debug("registry: %s", step),
            task,
        )
    with resume_run(info, params.mlflow.connect_timeout_s):
        mlflow.set_tags(
            {
                "registry.version": record["version"],
                "registry.promoted": str(record["promoted"]).lower(),
                reg.TASK_TAG: reg.task_signature(task),
            }
        )
    write_json(args.out, record)
    print(f"register: {p.model_name} version {record['version']}: {record['reason']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", default="models/run.json", help="the MLflow run written by train")
    p.add_argument("--metrics", default="reports/metrics.json", help="evaluate's metrics")
    p.add_argument("--data", default="data/processed", help="processed splits (test.npz, meta)")
    p.add_argument("--out", default="reports/registry.json", help="the decision record")
    return p


if __name__ == "__main__":
    raise SystemExit(run_stage("register", main, parser()))
