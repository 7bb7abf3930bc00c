"""One report per run: a self-contained HTML page and a Markdown summary for CI.

The report gathers what the stages wrote (validation, params, learning curves, fit verdict,
test metrics, confusion matrix, attributions or importances, flagged slices, registration and
lineage) into a page whose images are inlined as base64 data URIs, so the single file can be
mailed, attached to an MLflow run or opened from a CI artifact. Functions here take data and
return text or PNG bytes; the stage reads and writes the files.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnops.config import Params
from nnops.secrets import redact_text

log = logging.getLogger(__name__)

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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def learning_curves_png(history: Mapping[str, Sequence[float]]) -> bytes | None:
    """Loss and accuracy per epoch, training against validation, side by side.

    Args:
        history: columns of ``reports/train/history.csv`` (epoch, loss, val_loss, ...).
    """
    metrics = [m for m in ("loss", "accuracy") if m in history]
    if not metrics:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.4), squeeze=False)
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
    return _png(fig)


def confusion_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """The test confusion matrix with counts in the cells (rows: true, columns: predicted).

    Args:
        matrix: counts, shape (classes, classes).
        class_names: the name of each class index.
    """
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(matrix)
    k = len(class_names)
    size = min(3.0 + 0.45 * k, 14.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in class_names], rotation=90)
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        top = counts.max() or 1
        for (i, j), v in np.ndenumerate(counts):
            color = "white" if v > top / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color=color)
    ax.set_title("Test confusion matrix")
    return _png(fig)


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
        "has_history": inputs.history is not None,
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
        "images": {name: _data_uri(png) for name, png in figures.items()},
    }


_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
 body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px;
        padding: 1rem 2rem 3rem; color: #1f2328; }
 h1 { font-size: 1.6rem; margin-bottom: .2rem; }
 h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; margin-top: 2rem; }
 table { border-collapse: collapse; margin: .5rem 0; }
 th, td { border: 1px solid #d0d7de; padding: .2rem .55rem; text-align: left; }
 th { background: #f6f8fa; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 tr.bad td { background: #ffebe9; }
 img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
 .pill { display: inline-block; padding: .05rem .6rem; border-radius: 1rem; font-weight: 600; }
 .ok { background: #dafbe1; color: #116329; } .warn { background: #fff8c5; color: #7d4e00; }
 .fail { background: #ffebe9; color: #a40e26; }
 .muted { color: #656d76; } code { background: #f6f8fa; padding: 0 .25rem; }
 nav a { margin-right: .8rem; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<nav>{% for s in sections %}<a href="#{{ s }}">{{ s.replace('-', ' ') }}</a>{% endfor %}</nav>

<section id="summary">
<h2>Summary</h2>
<p>
 Data validation: {{ pill(validation_success, 'passed', 'failed') }}
 &nbsp; Fit: {% if verdict %}<span class="pill {{ 'ok' if verdict == 'good fit' else 'warn' }}">
 {{ verdict }}</span>{% else %}<span class="muted">unknown</span>{% endif %}
 {% if 'test' in metrics %}&nbsp; Test accuracy: <b>{{ fmt(metrics.test.accuracy) }}</b>{% endif %}
 &nbsp; Flagged slices/classes: <b>{{ flagged | length }}</b>
 {% if registry %}&nbsp; Registered: {{ pill(registry.registered, 'yes', 'no') }}
 {% if registry.promoted is defined %} Promoted: {{ pill(registry.promoted, 'yes', 'no') }}
 {% endif %}{% endif %}
</p>
</section>

<section id="validation">
<h2>Data validation</h2>
{% if validation is none %}<p class="muted">No validation summary found.</p>{% else %}
<p>{{ expectations | length }} expectations, {{ failed_expectations | length }} failed:
 {{ pill(validation_success, 'data accepted', 'data rejected') }}</p>
{% if failed_expectations %}
<table><tr><th>expectation</th><th>column</th><th>observed</th><th>bound</th></tr>
{% for e in failed_expectations %}<tr class="bad">
<td title="{{ e.description or '' }}">{{ e.name }}</td><td>{{ fmt(e.column) }}</td>
<td>{{ fmt(e.observed) }}</td><td>{{ fmt(e.bound) }}</td></tr>{% endfor %}</table>{% endif %}
<details><summary>All expectations</summary>
<table><tr><th>expectation</th><th>column</th><th>observed</th><th>bound</th><th>ok</th></tr>
{% for e in expectations %}<tr{% if not e.success %} class="bad"{% endif %}>
<td title="{{ e.description or '' }}">{{ e.name }}</td>
<td>{{ fmt(e.column) }}</td><td>{{ fmt(e.observed) }}</td><td>{{ fmt(e.bound) }}</td>
<td>{{ fmt(e.success) }}</td></tr>{% endfor %}</table></details>{% endif %}
</section>

<section id="params">
<h2>Params that differ from the committed params.yaml</h2>
{% if params_diff %}<table><tr><th>param</th><th>committed</th><th>this run</th></tr>
{% for p in params_diff %}<tr><td><code>{{ p.key }}</code></td><td>{{ fmt(p.default) }}</td>
<td><b>{{ fmt(p.value) }}</b></td></tr>{% endfor %}</table>
{% else %}<p>All params are as committed.</p>{% endif %}
</section>

<section id="tuning">
<h2>Tuning</h2>
{% if not tuning %}<p class="muted">This model's params were not chosen by a tuning study
(<code>nnops tune --apply</code>).</p>{% else %}
<p>Chosen by Optuna study <b>{{ tuning.study }}</b> (<code>{{ tuning.storage }}</code>):
trial {{ tuning.best_trial }} of {{ tuning.trials.values() | sum }}
({{ tuning.trials.complete }} complete, {{ tuning.trials.pruned }} pruned,
{{ tuning.trials.fail }} failed; {{ tuning.epochs }} epochs in all), best validation
{{ tuning.metric }} <b>{{ fmt(tuning.best_value) }}</b>{% if tuning.cv %} (k-fold mean,
std {{ fmt(tuning.cv.std) }}){% endif %}. MLflow parent run <code>{{ tuning.parent_run_id }}</code>.
</p>
<table><tr><th>param</th><th>value</th></tr>{% for k, v in tuning.params.items() %}
<tr><td><code>{{ k }}</code></td><td>{{ fmt(v) }}</td></tr>{% endfor %}</table>
{% for name in ['tune_optimization_history.png', 'tune_param_importances.png'] %}
{% if name in images %}<img alt="{{ name[5:-4].replace('_', ' ') }}" src="{{ images[name] }}">
{% endif %}{% endfor %}{% endif %}
</section>

<section id="learning-curves">
<h2>Learning curves</h2>
{% if 'learning_curves.png' in images %}
<img alt="learning curves" src="{{ images['learning_curves.png'] }}">
{% else %}<p class="muted">No training history found.</p>{% endif %}
</section>

<section id="fit">
<h2>Fit verdict</h2>
{% if verdict %}<p>Verdict: <b>{{ verdict }}</b></p>
{% if evidence %}<ul>{% for e in evidence %}<li>{{ e }}</li>{% endfor %}</ul>{% endif %}
{% if action %}<p>Recommended action: {{ action }}</p>{% endif %}
{% if fit %}<table><tr>{% for k in fit %}<th>{{ k }}</th>{% endfor %}</tr>
<tr>{% for v in fit.values() %}<td class="num">{{ fmt(v) }}</td>{% endfor %}</tr></table>{% endif %}
{% else %}<p class="muted">No fit diagnosis found.</p>{% endif %}
</section>

<section id="metrics">
<h2>Metrics</h2>
{% if splits %}<table><tr><th>split</th>{% for m in headline %}<th>{{ m }}</th>{% endfor %}</tr>
{% for s in splits %}<tr><td>{{ s }}</td>{% for m in headline %}
<td class="num">{{ fmt(metrics[s][m]) }}</td>{% endfor %}</tr>{% endfor %}</table>
{% else %}<p class="muted">No metrics found.</p>{% endif %}
{% if per_class %}<details open><summary>Per-class test metrics (worst F1 first)</summary>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>
{% for r in per_class %}<tr><td>{{ r['class'] }}</td><td class="num">{{ fmt(r.precision) }}</td>
<td class="num">{{ fmt(r.recall) }}</td><td class="num">{{ fmt(r.f1) }}</td>
<td class="num">{{ r.support }}</td></tr>{% endfor %}</table></details>{% endif %}
</section>

<section id="confusion">
<h2>Confusion matrix</h2>
{% if 'confusion.png' in images %}<img alt="confusion matrix" src="{{ images['confusion.png'] }}">
{% else %}<p class="muted">No confusion matrix found.</p>{% endif %}
</section>

<section id="explain">
<h2>What the model looks at</h2>
{% if not explain %}<p class="muted">No explanation found.</p>
{% elif explain.kind == 'disabled' %}
<p>Explanations are off (<code>evaluate.explain: false</code>).</p>
{% elif explain.kind == 'attribution' %}
<p>Mean {{ explain.method.replace('_', ' ') }} per class over correctly classified test examples:
red pixels push the prediction towards the class, blue pixels away from it.</p>
<img alt="attribution grid" src="{{ images['attributions.png'] }}">
<h3>Most confident mistakes</h3>
<img alt="misclassified examples" src="{{ images['misclassified.png'] }}">
{% else %}
<p>Permutation importance on the test set ({{ explain.repeats }} shuffles per feature): the test
accuracy lost when one feature's values are shuffled.</p>
<img alt="feature importances" src="{{ images['importances.png'] }}">
<details><summary>Importance table</summary>
<table><tr><th>rank</th><th>feature</th><th>accuracy drop</th><th>std</th></tr>
{% for r in importances %}<tr><td class="num">{{ r.rank }}</td><td>{{ r.feature }}</td>
<td class="num">{{ fmt(r.importance_mean) }}</td><td class="num">{{ fmt(r.importance_std) }}</td>
</tr>{% endfor %}</table></details>
{% endif %}
</section>

<section id="slices">
<h2>Slices and weak classes</h2>
{% if not slices %}<p class="muted">No slice metrics found.</p>{% else %}
<p>Overall test accuracy {{ fmt(slices.overall.accuracy) }}; a slice or class is flagged when its
accuracy (for a class: recall) is more than {{ fmt(slices.max_gap) }} below it.</p>
{% if flagged %}<table><tr><th>column</th><th>value</th><th>support</th><th>accuracy</th>
<th>F1</th><th>gap</th></tr>{% for r in flagged %}<tr class="bad"><td>{{ r.column }}</td>
<td>{{ r.value }}</td><td class="num">{{ r.support }}</td><td class="num">{{ fmt(r.accuracy) }}</td>
<td class="num">{{ fmt(r.f1_macro) }}</td><td class="num">{{ fmt(r.gap) }}</td></tr>{% endfor %}
</table>{% else %}<p><span class="pill ok">nothing flagged</span></p>{% endif %}
{% for title, rows in [('Slices', slice_rows), ('Classes by recall', class_rows)] %}{% if rows %}
<details><summary>{{ title }} ({{ rows | length }})</summary>
<table><tr><th>column</th><th>value</th><th>support</th><th>accuracy</th><th>F1</th><th>gap</th>
</tr>{% for r in rows %}<tr{% if r.flagged %} class="bad"{% endif %}><td>{{ r.column }}</td>
<td>{{ r.value }}</td><td class="num">{{ r.support }}</td><td class="num">{{ fmt(r.accuracy) }}</td>
<td class="num">{{ fmt(r.f1_macro) }}</td><td class="num">{{ fmt(r.gap) }}</td></tr>{% endfor %}
</table></details>{% endif %}{% endfor %}{% endif %}
</section>

<section id="registry">
<h2>Registration</h2>
{% if not registry %}<p class="muted">No registration result found.</p>{% else %}
<p>Registered: {{ pill(registry.registered, 'yes', 'no') }}
{% if registry.model_name %} as <code>{{ registry.model_name }}</code>{% endif %}
{% if registry.version %} version <b>{{ registry.version }}</b>{% endif %}
{% if registry.promoted is defined %}, promoted: {{ pill(registry.promoted, 'yes', 'no') }}
{% endif %}
{% if registry.alias %} alias <code>@{{ registry.alias }}</code>{% endif %}</p>
{% if registry.reason %}<p>{{ registry.reason }}</p>{% endif %}
{% if gates %}<table><tr><th>gate</th><th>passed</th><th>value</th><th>threshold</th>
<th>detail</th></tr>
{% for g in gates %}{% if g is mapping %}
<tr{% if g.passed is sameas false %} class="bad"{% endif %}>
<td>{{ g.name }}</td><td>{{ fmt(g.passed) }}</td><td class="num">{{ fmt(g.value) }}</td>
<td class="num">{{ fmt(g.threshold) }}</td><td>{{ g.detail }}</td></tr>
{% else %}<tr><td colspan="5">{{ g }}</td></tr>{% endif %}{% endfor %}</table>{% endif %}
{% endif %}
</section>

<section id="lineage">
<h2>Lineage</h2>
<table>{% for k, v in lineage.items() %}<tr><th>{{ k }}</th><td><code>{{ v }}</code></td></tr>
{% endfor %}</table>
</section>
</body>
</html>
"""


def _pill(value: Any, yes: str, no: str) -> Any:
    from markupsafe import Markup

    if value is None:
        return Markup('<span class="pill warn">unknown</span>')
    cls, text = ("ok", yes) if value else ("fail", no)
    return Markup(f'<span class="pill {cls}">{text}</span>')


def render_html(view: Mapping[str, Any]) -> str:
    """Fill the HTML template (every value is escaped).

    Args:
        view: the output of the report's view builder.
    """
    from jinja2 import Environment

    # Default (lenient) undefined on purpose: a key another stage did not write renders empty.
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(fmt=_fmt, pill=_pill, sections=SECTIONS)
    return env.from_string(_HTML).render(**view)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        text = _fmt(v).replace("|", "\\|").replace("\n", " ")
        return text.replace("<", "&lt;").replace(">", "&gt;")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return lines


def render_markdown(view: Mapping[str, Any]) -> str:
    """A short Markdown summary for a CI job page or a pull-request comment.

    Args:
        view: the output of the report's view builder.
    """
    out = [f"## {view['title']}", ""]
    ok = view["validation_success"]
    if view["validation"] is None:
        out.append("- **Data validation:** unknown (no validation summary)")
    else:
        n_failed, n_all = len(view["failed_expectations"]), len(view["expectations"])
        out.append(
            f"- **Data validation:** {'passed' if ok else 'failed'} "
            f"({n_failed} of {n_all} expectations failed)"
        )
    out.append(f"- **Fit:** {view['verdict'] or 'unknown'}")
    if view["action"]:
        out.append(f"- **Recommended action:** {view['action']}")
    reg = view["registry"]
    if reg:
        out.append(
            f"- **Registered:** {'yes' if reg.get('registered') else 'no'}"
            + (f", version {reg['version']}" if reg.get("version") else "")
            + (f", alias @{reg['alias']}" if reg.get("alias") else "")
            + (f" ({reg['reason']})" if reg.get("reason") else "")
        )
    out.append("")
    if view["splits"]:
        out += ["### Metrics", ""]
        rows = [[s, *(view["metrics"][s].get(m) for m in view["headline"])] for s in view["splits"]]
        out += _md_table(["split", *view["headline"]], rows) + [""]
    if view["failed_expectations"]:
        out += ["### Failed expectations", ""]
        rows = [[e.get("name"), e.get("column"), e.get("observed"), e.get("bound")]
                for e in view["failed_expectations"]]  # fmt: skip
        out += _md_table(["expectation", "column", "observed", "bound"], rows) + [""]
    out += ["### Params that differ from the committed params.yaml", ""]
    if view["params_diff"]:
        rows = [[f"`{p['key']}`", p["default"], p["value"]] for p in view["params_diff"]]
        out += _md_table(["param", "default", "this run"], rows) + [""]
    else:
        out += ["All params are as committed.", ""]
    tuning = view["tuning"]
    if tuning:
        out += ["### Tuning", "", f"Study `{tuning.get('study')}`, best trial "
                f"{tuning.get('best_trial')}: {tuning.get('metric')} "
                f"{_fmt(tuning.get('best_value'))} (MLflow parent run "
                f"`{tuning.get('parent_run_id')}`).", ""]  # fmt: skip
    if view["flagged"]:
        out += ["### Flagged slices and classes", ""]
        rows = [[r["column"], r["value"], r["support"], r["accuracy"], r["gap"]]
                for r in view["flagged"]]  # fmt: skip
        out += _md_table(["column", "value", "support", "accuracy", "gap"], rows) + [""]
    elif view["slices"]:
        out += ["### Flagged slices and classes", "", "None.", ""]
    if view["importances"]:
        out += ["### Top features (permutation importance)", ""]
        rows = [[r["rank"], r["feature"], r["importance_mean"]] for r in view["importances"][:10]]
        out += _md_table(["rank", "feature", "accuracy drop"], rows) + [""]
    if view["lineage"]:
        out += ["### Lineage", ""]
        out += _md_table(["", ""], [[k, f"`{v}`"] for k, v in view["lineage"].items()]) + [""]
    return "\n".join(out).rstrip() + "\n"


def build_report(inputs: ReportInputs) -> Report:
    """Draw the report's own figures and render the HTML page and the Markdown summary.

    Args:
        inputs: everything the earlier stages wrote.
    """
    figures: dict[str, bytes] = {}
    if inputs.history:
        curves = learning_curves_png(inputs.history)
        if curves:
            figures["learning_curves.png"] = curves
    evaluation = inputs.evaluation or {}
    if evaluation.get("confusion_matrix"):
        names = evaluation.get("class_names") or [
            str(i) for i in range(len(evaluation["confusion_matrix"]))
        ]
        figures["confusion.png"] = confusion_png(evaluation["confusion_matrix"], names)
    for name, png in inputs.images.items():
        figures[name] = png
    view = _view(inputs, figures)
    return Report(render_html(view), render_markdown(view), figures)


# --- File edges used by pipelines/report.py ------------------------------------------------------


def _read_optional_json(path: Path) -> Any:
    from nnops.io import read_json

    if not path.exists():
        log.warning("%s not found; its report section will say so", path)
        return None
    return read_json(path)


def read_history(path: Path) -> dict[str, list[float]] | None:
    """Read ``reports/train/history.csv`` into float columns; None when the file is missing.

    Args:
        path: the history file.
    """
    import csv

    from nnops.errors import NnopsError

    if not path.exists():
        log.warning("%s not found; the report will have no learning curves", path)
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for line, row in enumerate(rows, start=2):
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value) if value != "" else math.nan)
            except (TypeError, ValueError):
                raise NnopsError(
                    f"{path}:{line}: column {key!r} holds {value!r}, not a number"
                ) from None
    return columns


def git_lineage(root: Path) -> dict[str, str]:
    """The commit the workspace is on and whether it has uncommitted changes.

    Args:
        root: the repository root.
    """
    import subprocess

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown (not a git repository)"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_state": "uncommitted changes" if dirty else "clean"}


def committed_params(root: Path) -> Params | None:
    """The ``params.yaml`` of the commit checked out at ``root``; None when there is none.

    Args:
        root: the repository root.
    """
    import subprocess

    import yaml

    from nnops.config import ConfigError, parse_params, read_yaml

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
) -> ReportInputs:
    """Read every stage output the report shows; a missing file becomes a visible gap.

    Args:
        params: the params of this run.
        validation: ``reports/validation`` (holds ``validation.json``).
        metrics: ``reports/metrics.json``.
        evaluation: ``reports/evaluation.json``.
        history: ``reports/train/history.csv``.
        explain: ``reports/explain`` (explain.json, slices.json and PNG figures).
        registry: ``reports/registry.json``.
        run: ``models/run.json``.
        data_meta: ``data/processed/meta.json``.
        lineage: git and run context gathered by the stage.
        baseline: the committed params, to list what this run changed.
    """
    images = {p.name: p.read_bytes() for p in sorted(explain.glob("*.png"))}
    run_info = _read_optional_json(run)
    tuned = ((run_info or {}).get("extra") or {}).get("tune") or {}
    for fig in map(Path, tuned.get("figures") or []):  # the study's pictures, when still there
        if fig.is_file():
            images[f"tune_{fig.name}"] = fig.read_bytes()
    return ReportInputs(
        params=params,
        baseline=baseline,
        validation=_read_optional_json(validation / "validation.json"),
        metrics=_read_optional_json(metrics),
        evaluation=_read_optional_json(evaluation),
        history=read_history(history),
        explain=_read_optional_json(explain / "explain.json"),
        slices=_read_optional_json(explain / "slices.json"),
        images=images,
        registry=_read_optional_json(registry),
        run=run_info,
        data_meta=_read_optional_json(data_meta),
        lineage=dict(lineage),
    )
