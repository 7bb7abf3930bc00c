"""One report per run: a self-contained HTML page and a Markdown summary for CI.

The report gathers what the stages wrote (validation, params, learning curves, fit verdict,
test metrics, confusion matrix, attributions or importances, flagged slices, registration and
lineage) into a page whose images are inlined as base64 data URIs, so the single file can be
mailed, attached to an MLflow run or opened from a CI artifact. The figures are the PNGs the
evaluate and explain stages saved; the report draws only what no earlier stage wrote. The page
and the summary come from the Jinja2 templates in ``nnops/templates``.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from nnops.config import Params
from nnops.secrets import redact_text

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
HTML_TEMPLATE, MD_TEMPLATE = "report.html.j2", "report.md.j2"

# The HTML section ids, in page order; tests and readers rely on them.
SECTIONS = (
    "summary",
    "validation",
    "params",
    "tuning",
    "learning-curves",
    "fit",
    "metrics",
    "confusion",
    "explain",
    "slices",
    "registry",
    "lineage",
)

CURVE_PNGS = ("loss.png", "accuracy.png")
"""The evaluate stage's per-epoch figures (train against validation) in ``reports/plots``."""
CONFUSION_PNG = "confusion_test.png"
"""The evaluate stage's test confusion matrix in ``reports/plots``."""


@dataclass(frozen=True)
class ReportInputs:
    """What the stages wrote, already read from disk; ``None`` marks an input that is missing."""

    params: Params
    baseline: Params | None = None
    """The committed ``params.yaml`` (git HEAD) this run's params are compared with."""
    validation: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    evaluation: Mapping[str, Any] | None = None
    history: Mapping[str, Sequence[float]] | None = None
    explain: Mapping[str, Any] | None = None
    slices: Mapping[str, Any] | None = None
    images: Mapping[str, bytes] = field(default_factory=dict)
    """PNG files by name: evaluate's plots, explain's figures, a tuning study's pictures."""
    registry: Mapping[str, Any] | None = None
    run: Mapping[str, Any] | None = None
    data_meta: Mapping[str, Any] | None = None
    lineage: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """The rendered report."""

    html: str
    markdown: str
    figures: dict[str, bytes]


def params_diff(params: Params, baseline: Params | None) -> list[dict[str, Any]]:
    """Every param whose value differs from the committed ``params.yaml``, by dotted name.

    Code holds no defaults: the baseline is the params file of the commit the run was made from
    (an experiment's changes show here); no baseline, no rows.

    Args:
        params: the params of this run.
        baseline: the committed params, if they could be read.
    """
    if baseline is None:
        return []
    defaults = baseline.flat()
    current = params.flat()
    rows = []
    for key in sorted(set(defaults) | set(current)):
        before, after = defaults.get(key, "(not set)"), current.get(key, "(not set)")
        if before != after:
            rows.append({"key": key, "default": before, "value": after})
    return rows


def learning_curves_png(history: Mapping[str, Sequence[float]]) -> bytes | None:
    """Loss and accuracy per epoch, training against validation, side by side.

    Drawn only when the evaluate stage's ``loss.png`` and ``accuracy.png`` are missing.

    Args:
        history: columns of ``reports/train/history.csv`` (epoch, loss, val_loss, ...).
    """
    from nnops.plots import png_bytes, pyplot

    metrics = [m for m in ("loss", "accuracy") if m in history]
    if not metrics:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = pyplot().subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.4), squeeze=False)
    epochs = list(history.get("epoch") or range(1, len(history[metrics[0]]) + 1))
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.plot(epochs, history[metric], marker="o", markersize=3, label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", markersize=3, label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return png_bytes(fig, dpi=100)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) if value else "[]"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) if value else "{}"
    return str(value)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _expectations(validation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not validation:
        return []
    rows = validation.get("expectations") or validation.get("results") or []
    return sorted(
        (dict(r) for r in rows if isinstance(r, Mapping)),
        key=lambda r: (bool(r.get("success")), str(r.get("name", ""))),
    )


def _view(inputs: ReportInputs, figures: Mapping[str, bytes]) -> dict[str, Any]:
    """Everything the templates show, as plain values."""
    images = {name: _data_uri(png) for name, png in figures.items()}
    metrics = inputs.metrics or {}
    evaluation = inputs.evaluation or {}
    fit = dict(metrics.get("fit") or {})
    verdict = evaluation.get("verdict") or fit.get("verdict")
    explain = dict(inputs.explain or {})
    slices = dict(inputs.slices or {})
    run = dict(inputs.run or {})
    registry = dict(inputs.registry or {})
    meta = dict(inputs.data_meta or {})
    expectations = _expectations(inputs.validation)
    failed = [e for e in expectations if not e.get("success")]
    splits = [s for s in ("train", "val", "test") if isinstance(metrics.get(s), Mapping)]
    flagged = list(slices.get("flagged_slices") or []) + list(slices.get("flagged_classes") or [])
    lineage = {
        "git commit": inputs.lineage.get("git_commit"),
        "working tree": inputs.lineage.get("git_state"),
        "DVC experiment": inputs.lineage.get("dvc_exp"),
        "data source": meta.get("source"),
        "raw data hash": meta.get("content_hash"),
        "processed data hash": meta.get("data_hash"),
        "MLflow run id": run.get("run_id"),
        "MLflow experiment id": run.get("experiment_id"),
        "MLflow tracking URI": redact_text(str(run.get("tracking_uri") or "")),
        "model URI": run.get("model_uri"),
        "generated": inputs.lineage.get("generated_at"),
        "runs closed as KILLED (their process died)": inputs.lineage.get("closed_runs"),
    }
    return {
        "title": f"nnops run report: {meta.get('source', 'unknown source')}",
        "validation": inputs.validation,
        "validation_success": (inputs.validation or {}).get("success"),
        "expectations": expectations,
        "failed_expectations": failed,
        "params_diff": params_diff(inputs.params, inputs.baseline),
        "metrics": metrics,
        "splits": splits,
        "headline": ["accuracy", "f1_macro", "loss"],
        "fit": fit,
        "verdict": verdict,
        "evidence": list(evaluation.get("evidence") or []),
        "action": evaluation.get("recommended_action"),
        "per_class": sorted(
            (r for r in evaluation.get("per_class") or [] if isinstance(r, Mapping)),
            key=lambda r: (r.get("f1", 0.0), str(r.get("class", ""))),
        ),
        "explain": explain,
        "importances": list(explain.get("importances") or []),
        "slices": slices,
        "slice_rows": list(slices.get("slices") or []),
        "class_rows": list(slices.get("classes") or []),
        "flagged": flagged,
        "registry": registry,
        "gates": list(registry.get("gates") or []),
        "run": run,
        "tuning": dict((run.get("extra") or {}).get("tune") or {}),
        "lineage": {k: v for k, v in lineage.items() if v not in (None, "")},
        "images": images,
        "curve_images": [images[n] for n in CURVE_PNGS if n in images]
        or [images[n] for n in ("learning_curves.png",) if n in images],
        "confusion_image": images.get(CONFUSION_PNG),
    }


def _pill(value: Any, yes: str, no: str) -> Any:
    from markupsafe import Markup

    if value is None:
        return Markup('<span class="pill warn">unknown</span>')
    cls, text = ("ok", yes) if value else ("fail", no)
    return Markup(f'<span class="pill {cls}">{text}</span>')


def _cell(value: Any) -> str:
    """A Markdown table cell: formatted, on one line, pipes and angle brackets escaped."""
    text = _fmt(value).replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")


@cache
def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader

    # Default (lenient) undefined on purpose: a key another stage did not write renders empty.
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=lambda name: name == HTML_TEMPLATE,  # Markdown is not HTML-escaped
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(fmt=_fmt, pill=_pill, sections=SECTIONS)
    env.filters["cell"] = _cell
    return env


def render_html(view: Mapping[str, Any]) -> str:
    """Fill ``report.html.j2`` (every value is escaped).

    Args:
        view: the output of the report's view builder.
    """
    return _environment().get_template(HTML_TEMPLATE).render(**view)


def render_markdown(view: Mapping[str, Any]) -> str:
    """Fill ``report.md.j2``: a short summary for a CI job page or a pull-request comment.

    Args:
        view: the output of the report's view builder.
    """
    text = _environment().get_template(MD_TEMPLATE).render(**view)
    return text.rstrip() + "\n"


def build_report(inputs: ReportInputs) -> Report:
    """Render the HTML page and the Markdown summary, drawing only the figures no stage saved.

    Args:
        inputs: everything the earlier stages wrote.
    """
    figures: dict[str, bytes] = {}
    if inputs.history and not any(name in inputs.images for name in CURVE_PNGS):
        curves = learning_curves_png(inputs.history)
        if curves:
            figures["learning_curves.png"] = curves
    figures.update(inputs.images)
    view = _view(inputs, figures)
    return Report(render_html(view), render_markdown(view), figures)


# --- File edges used by pipelines/report.py ------------------------------------------------------


def _read_optional_json(path: Path) -> Any:
    from nnops.io import read_json

    if not path.exists():
        log.warning("%s not found; its report section will say so", path)
        return None
    return read_json(path)


def git_lineage(root: Path) -> dict[str, str]:
    """The commit the workspace is on and whether it has uncommitted changes, in words.

    Args:
        root: the repository root.
    """
    from nnops.lineage import git_state

    state = git_state(root)
    if state["commit"] == "unknown":
        return {"git_commit": "unknown (not a git repository)"}
    dirty = {"true": "uncommitted changes", "false": "clean"}.get(state["dirty"], "unknown")
    return {"git_commit": state["commit"], "git_state": dirty}


def stage_lineage(root: Path, info: Any, timeout_s: float) -> dict[str, Any]:
    """Close the runs a killed process left RUNNING, then gather the lineage rows the stage adds.

    Args:
        root: the workspace the stage runs in (its HEAD is the commit the run was made from).
        info: ``models/run.json`` (a ``nnops.tracking.RunInfo``).
        timeout_s: how long to wait for a tracking server.
    """
    import os
    from datetime import UTC, datetime

    from nnops.tracking import close_dead_runs, store_uri

    closed = close_dead_runs(store_uri(info, timeout_s), info.experiment_id)
    return git_lineage(root) | {
        "dvc_exp": os.environ.get("DVC_EXP_NAME"),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "closed_runs": ", ".join(closed),
    }


def log_report(info: Any, out: Path, explain: Path, validation: Path, timeout_s: float) -> None:
    """Attach ``report.html``/``report.md``, explain's folder and validate's ``validation.json``
    to the training run (train does not depend on validate's report, so it is logged here).

    Args:
        info: ``models/run.json`` (a ``nnops.tracking.RunInfo``).
        out: the folder holding the report files.
        explain: ``reports/explain``.
        validation: ``reports/validation``.
        timeout_s: how long to wait for a tracking server.
    """
    import mlflow

    from nnops.catalog import REPORT_HTML, REPORT_MD, VALIDATION_JSON
    from nnops.tracking import resume_run

    with resume_run(info, timeout_s) as run:
        for name in (REPORT_HTML.name, REPORT_MD.name):
            mlflow.log_artifact(str(out / name), artifact_path="report")
        if (validation / VALIDATION_JSON).is_file():
            mlflow.log_artifact(str(validation / VALIDATION_JSON), artifact_path="validation")
        if explain.is_dir():
            mlflow.log_artifacts(str(explain), artifact_path="explain")
        log.info("logged the report to MLflow run %s", run.info.run_id)


def committed_params(root: Path) -> Params | None:
    """The ``params.yaml`` of the commit checked out at ``root``; None when there is none.

    Args:
        root: the repository root.
    """
    import subprocess

    import yaml

    from nnops.config import ConfigError, parse_params
    from nnops.io import read_yaml

    try:
        proc = subprocess.run(
            ["git", "show", "HEAD:params.yaml"], cwd=root, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        return parse_params(read_yaml(proc.stdout), "HEAD:params.yaml")
    except (ConfigError, yaml.YAMLError):
        return None  # committed before a params change: nothing comparable


def load_inputs(
    params: Params,
    validation: Path,
    metrics: Path,
    evaluation: Path,
    history: Path,
    explain: Path,
    registry: Path,
    run: Path,
    data_meta: Path,
    lineage: Mapping[str, Any],
    baseline: Params | None = None,
    plots: Path | None = None,
) -> ReportInputs:
    """Read every stage output the report shows; a missing file becomes a visible gap.

    Args:
        params: the params of this run.
        validation: ``reports/validation`` (holds ``validation.json``).
        metrics: ``reports/metrics.json``.
        evaluation: ``reports/evaluation.json``.
        history: ``reports/train/history.csv``, read only when evaluate's curves are missing.
        explain: ``reports/explain`` (explain.json, slices.json and PNG figures).
        registry: ``reports/registry.json``.
        run: ``models/run.json``.
        data_meta: ``data/processed/meta.json``.
        lineage: git and run context gathered by the stage.
        baseline: the committed params, to list what this run changed.
        plots: ``reports/plots`` (evaluate's PNG figures).
    """
    from nnops.catalog import read_history

    images = {p.name: p.read_bytes() for p in sorted(explain.glob("*.png"))}
    for name in (*CURVE_PNGS, CONFUSION_PNG) if plots is not None else ():
        if (plots / name).is_file():
            images[name] = (plots / name).read_bytes()
    run_info = _read_optional_json(run)
    tuned = ((run_info or {}).get("extra") or {}).get("tune") or {}
    for fig in map(Path, tuned.get("figures") or []):  # the study's pictures, when still there
        if fig.is_file():
            images[f"tune_{fig.name}"] = fig.read_bytes()
    curves = None
    if not any(name in images for name in CURVE_PNGS):
        if history.is_file():
            curves = read_history(history)
        else:
            log.warning("%s not found; the report will have no learning curves", history)
    return ReportInputs(
        params=params,
        baseline=baseline,
        validation=_read_optional_json(validation / "validation.json"),
        metrics=_read_optional_json(metrics),
        evaluation=_read_optional_json(evaluation),
        history=curves,
        explain=_read_optional_json(explain / "explain.json"),
        slices=_read_optional_json(explain / "slices.json"),
        images=images,
        registry=_read_optional_json(registry),
        run=run_info,
        data_meta=_read_optional_json(data_meta),
        lineage=dict(lineage),
    )
