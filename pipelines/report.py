"""report stage: one self-contained HTML report and a Markdown summary per run, logged to MLflow."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nnops import catalog
from nnops import report as rp
from nnops.config import Params
from nnops.io import write_text
from nnops.stage import run_stage

log = logging.getLogger("nnops.report")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops.tracking import read_run_info

    info, timeout_s, root = read_run_info(args.run), params.mlflow.connect_timeout_s, Path.cwd()
    paths = {k: Path(getattr(args, k)) for k in INPUTS}
    lineage, baseline = rp.stage_lineage(root, info, timeout_s), rp.committed_params(root)
    report = rp.build_report(rp.load_inputs(params, lineage=lineage, baseline=baseline, **paths))
    out = Path(args.out)
    html, md = out / catalog.REPORT_HTML.name, out / catalog.REPORT_MD.name
    write_text(html, report.html)
    write_text(md, report.markdown)
    log.info("wrote %s and %s", html, md)
    rp.log_report(info, out, paths["explain"], paths["validation"], timeout_s)


INPUTS = {  # what the earlier stages wrote, by flag
    "validation": catalog.VALIDATION_DIR, "metrics": catalog.METRICS_JSON,
    "evaluation": catalog.EVALUATION_JSON, "plots": catalog.PLOTS_DIR,
    "history": catalog.HISTORY_CSV, "explain": catalog.EXPLAIN_DIR,
    "registry": catalog.REGISTRY_JSON, "run": catalog.RUN_INFO,
    "data_meta": catalog.PROCESSED_DIR / catalog.PROCESSED_META,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    for name, path in INPUTS.items():
        p.add_argument("--" + name.replace("_", "-"), default=str(path), help="a stage's output")
    p.add_argument("--out", default=str(catalog.REPORTS_DIR), help="report.html, report.md")
    return p


if __name__ == "__main__":
    raise SystemExit(run_stage("report", main, build_parser()))
