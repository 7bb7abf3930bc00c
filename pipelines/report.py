"""report stage: one self-contained HTML report and a Markdown summary per run, logged to MLflow."""

from __future__ import annotations

import argparse
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from nnops import report as rp
from nnops.config import Params
from nnops.io import write_text
from nnops.stage import run_stage

log = logging.getLogger("nnops.report")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops.tracking import close_dead_runs, read_run_info, resume_run, store_uri

    info = read_run_info(args.run)
    # Runs a killed process left RUNNING are closed first, and the report lists them.
    closed = close_dead_runs(store_uri(info, params.mlflow.connect_timeout_s), info.experiment_id)
    # The stage's own workspace (a temporary clone under `dvc exp run --queue`): its HEAD is the
    # commit this run was made from.
    lineage = rp.git_lineage(Path.cwd()) | {
        "dvc_exp": os.environ.get("DVC_EXP_NAME"),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "closed_runs": ", ".join(closed),
    }
    paths = {k: Path(getattr(args, k)) for k in ("validation", "metrics", "evaluation", "history")}
    paths |= {k: Path(getattr(args, k)) for k in ("explain", "registry", "run", "data_meta")}
    baseline = rp.committed_params(Path.cwd())
    report = rp.build_report(rp.load_inputs(params, lineage=lineage, baseline=baseline, **paths))
    out = Path(args.out)
    write_text(out / "report.html", report.html)
    write_text(out / "report.md", report.markdown)
    log.info("wrote %s and %s", out / "report.html", out / "report.md")

    with resume_run(info, params.mlflow.connect_timeout_s) as run:
        import mlflow

        for name in ("report.html", "report.md"):
            mlflow.log_artifact(str(out / name), artifact_path="report")
        if paths["explain"].is_dir():
            mlflow.log_artifacts(str(paths["explain"]), artifact_path="explain")
        log.info("logged the report to MLflow run %s", run.info.run_id)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--validation", default="reports/validation", help="validate's output folder")
    p.add_argument("--metrics", default="reports/metrics.json", help="evaluate's metrics")
    p.add_argument("--evaluation", default="reports/evaluation.json", help="evaluate's details")
    p.add_argument("--history", default="reports/train/history.csv", help="per-epoch history")
    p.add_argument("--explain", default="reports/explain", help="explain's output folder")
    p.add_argument("--registry", default="reports/registry.json", help="register's decision")
    p.add_argument("--run", default="models/run.json", help="the MLflow run written by train")
    p.add_argument("--data-meta", default="data/processed/meta.json", help="processed data meta")
    p.add_argument("--out", default="reports", help="where report.html and report.md go")
    return p


if __name__ == "__main__":
    raise SystemExit(run_stage("report", main, parser()))
