"""register stage: register the run's model, promote it to @champion only through the gate."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict
from pathlib import Path

from nnops import register as reg
from nnops.config import Params
from nnops.errors import NnopsError
from nnops.evaluate import read_split
from nnops.io import read_json, write_json
from nnops.stage import run_stage

log = logging.getLogger("nnops.register")


def main(args: argparse.Namespace, params: Params) -> None:
    import mlflow

    from nnops.tracking import ensure_reachable, read_run_info, resume_run

    p, info, metrics = params.register_, read_run_info(args.run), read_json(args.metrics)
    if not info.model_uri:
        raise NnopsError(f"{args.run}: no model_uri; the train stage must log the model")
    uri = os.environ.get("MLFLOW_TRACKING_URI") or info.tracking_uri
    ensure_reachable(uri, params.mlflow.connect_timeout_s)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    version = str(reg.register_version(client, p.model_name, info.model_uri, info.run_id).version)

    current = reg.alias_version(client, p.model_name, reg.CHAMPION)
    already = current is not None and str(current.version) == version
    champion = None
    if current is not None and not already and p.compare_to_champion:
        x, y = read_split(Path(args.data) / "test.npz")
        champion = {
            "version": str(current.version),
            "accuracy": reg.score_model(f"models:/{p.model_name}@{reg.CHAMPION}", x, y),
            "candidate_accuracy": reg.score_model(f"models:/{p.model_name}/{version}", x, y),
        }
    fit = metrics.get("fit", {}).get("verdict", "unknown")
    gates = [] if already else reg.gate_checks(metrics["test"]["accuracy"], fit, p, champion)
    promoted = already or all(g.passed for g in gates)
    reason = "already champion" if already else reg.decision_reason(gates, current is None)
    class_names = read_json(Path(args.data) / "meta.json").get("class_names")
    tags = reg.promotion_tags(
        info.run_id,
        metrics,
        gates,
        reason,
        promoted,
        current.version if current else None,
        class_names,
    )
    if already:
        pass
    elif promoted:
        reg.promote(client, p.model_name, version, tags, lambda s: log.debug("registry: %s", s))
    else:
        reg.record_rejection(client, p.model_name, version, tags, p.challenger_alias)
    alias = reg.CHAMPION if promoted else (reg.CHALLENGER if p.challenger_alias else None)
    with resume_run(info, params.mlflow.connect_timeout_s):
        mlflow.set_tags({"registry.version": version, "registry.promoted": str(promoted).lower()})
    failed = [g.name for g in gates if not g.passed]
    record = {
        "registered": True,
        "model_name": p.model_name,
        "version": version,
        "run_id": info.run_id,
        "model_uri": f"models:/{p.model_name}/{version}",
        "promoted": promoted,
        "alias": alias,
        "previous_champion": str(current.version) if current else None,
        "reason": reason,
        "gates": [asdict(g) for g in gates],
        "failed_gates": failed,
        "champion_accuracy": champion["accuracy"] if champion else None,
    }
    write_json(args.out, record)
    print(f"register: {p.model_name} version {version}: {reason}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", default="models/run.json", help="the MLflow run written by train")
    p.add_argument("--metrics", default="reports/metrics.json", help="evaluate's metrics")
    p.add_argument("--data", default="data/processed", help="processed splits (test.npz, meta)")
    p.add_argument("--out", default="reports/registry.json", help="the decision record")
    return p


if __name__ == "__main__":
    raise SystemExit(run_stage("register", main, parser()))
