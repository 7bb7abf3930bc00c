"""The run report: sections, inlined images, params diff, escaping and the Markdown summary."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, repo_params
from nnops import report as rp
from nnops.config import parse_params

pytestmark = pytest.mark.unit


def _tiny_png(color: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buf, format="PNG")
    return buf.getvalue()


PLOTS = {
    name: _tiny_png(color)
    for name, color in (
        ("loss.png", "orange"),
        ("accuracy.png", "teal"),
        ("confusion_test.png", "navy"),
    )
}
EXPLAIN_PNGS = {"attributions.png": _tiny_png("red"), "misclassified.png": _tiny_png("blue")}


def _params(overrides: dict):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section_name, values in overrides.items():
        raw[section_name].update(values)
    return parse_params(raw)


def _inputs(**overrides) -> rp.ReportInputs:
    base = dict(
        params=_params({"train": {"epochs": 3, "learning_rate": 0.01}}),
        baseline=repo_params(),
        validation={
            "success": False,
            "expectations": [
                {"name": "row_count", "column": None, "observed": 500, "bound": ">= 100",
                 "success": True},
                {"name": "values_between", "column": "px_3", "observed": 19.0,
                 "bound": "[0, 16]", "success": False},
            ],
        },
        metrics={
            "train": {"loss": 0.1, "accuracy": 0.99, "f1_macro": 0.99},
            "val": {"loss": 0.2, "accuracy": 0.95, "f1_macro": 0.95},
            "test": {"loss": 0.25, "accuracy": 0.9412, "f1_macro": 0.94},
            "fit": {"verdict": "good fit", "accuracy_gap": 0.04},
        },
        evaluation={
            "class_names": ["zero", "one"],
            "per_class": [{"class": "one", "precision": 0.9, "recall": 0.8, "f1": 0.85,
                           "support": 10}],
            "confusion_matrix": [[9, 1], [2, 8]],
            "verdict": "good fit",
            "evidence": ["train and validation accuracy are within 0.05"],
            "recommended_action": "No change needed <for now>",
        },
        history={"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.6, 0.4],
                 "accuracy": [0.5, 0.8, 0.9], "val_accuracy": [0.5, 0.7, 0.85]},
        explain={"kind": "attribution", "method": "integrated_gradients"},
        slices={
            "overall": {"accuracy": 0.85, "f1_macro": 0.85, "support": 20},
            "max_gap": 0.05,
            "slices": [],
            "classes": [{"column": "class", "value": "one", "support": 10, "accuracy": 0.8,
                         "f1_macro": 0.84, "gap": 0.05, "flagged": False}],
            "flagged_slices": [],
            "flagged_classes": [{"column": "class", "value": "zero<b>", "support": 10,
                                 "accuracy": 0.7, "f1_macro": 0.7, "gap": 0.15,
                                 "flagged": True}],
        },
        images=PLOTS | EXPLAIN_PNGS,
        registry={"registered": True, "version": 4, "promoted": True, "alias": "champion",
                  "gates": [{"name": "min_test_accuracy", "passed": True, "value": 0.9412,
                             "threshold": 0.9, "margin": 0.0412, "detail": "0.94 >= 0.9"},
                            {"name": "good_fit", "passed": False, "value": "overfitting",
                             "threshold": "good fit", "margin": None, "detail": "verdict"}],
                  "reason": "passed every gate"},
        run={"run_id": "abc123", "experiment_id": "1", "tracking_uri": "sqlite:///x.db"},
        data_meta={"source": "digits", "data_hash": "d" * 64, "content_hash": "c" * 64},
        lineage={"git_commit": "f" * 40, "git_state": "clean"},
    )  # fmt: skip
    base.update(overrides)
    return rp.ReportInputs(**base)


def _section(html: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', html, re.S)
    assert match, f"section {name!r} missing"
    return match.group(1)


def test_every_section_is_present_in_order():
    html = rp.build_report(_inputs()).html
    positions = [html.index(f'<section id="{s}">') for s in rp.SECTIONS]
    assert positions == sorted(positions)


def test_images_are_inlined_and_decode():
    report = rp.build_report(_inputs())
    uris = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', report.html)
    names = {alt for alt, _ in uris}
    assert names == {"learning curves", "confusion matrix", "attribution grid",
                     "misclassified examples"}  # fmt: skip
    for _, payload in uris:
        assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="http' not in report.html and "src='" not in report.html


def test_evaluate_figures_are_embedded_as_saved_and_nothing_is_redrawn():
    report = rp.build_report(_inputs())
    assert report.figures == dict(PLOTS | EXPLAIN_PNGS)  # the files, byte for byte, no more
    curves = _section(report.html, "learning-curves")
    for name in ("loss.png", "accuracy.png"):
        assert base64.b64encode(PLOTS[name]).decode() in curves
    confusion = _section(report.html, "confusion")
    assert base64.b64encode(PLOTS["confusion_test.png"]).decode() in confusion


def test_learning_curves_are_drawn_from_the_history_only_when_evaluate_saved_none():
    report = rp.build_report(_inputs(images=EXPLAIN_PNGS))
    assert set(report.figures) == {"learning_curves.png", *EXPLAIN_PNGS}
    assert report.figures["learning_curves.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert 'alt="learning curves"' in _section(report.html, "learning-curves")
    assert "No confusion matrix found" in _section(report.html, "confusion")


def test_the_report_stage_imports_no_framework(tmp_path):
    """Rendering the report (templates, inputs from disk) loads no TensorFlow or plotting."""
    plots = tmp_path / "plots"
    plots.mkdir()
    for name, png in PLOTS.items():
        (plots / name).write_bytes(png)
    code = f"""
import sys
from pathlib import Path
from nnops import report as rp
from nnops.config import load_params
t = Path({str(tmp_path)!r})
inputs = rp.load_inputs(load_params({str(REPO / "params.yaml")!r}), t / "v", t / "m.json",
    t / "e.json", t / "h.csv", t / "x", t / "r.json", t / "run.json", t / "meta.json", {{}},
    plots=t / "plots")
html = rp.build_report(inputs).html
assert html.count("data:image/png") == 3, html
heavy = [m for m in ("tensorflow", "keras", "matplotlib", "sklearn", "mlflow") if m in sys.modules]
print("heavy:", heavy)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout


def test_params_diff_lists_only_changed_keys():
    slices = {"data": {"exclude_columns": ["a"]}, "explain": {"slice_by": ["a"]}}
    changed = _params({"train": {"epochs": 3}, **slices})
    rows = rp.params_diff(changed, repo_params())
    committed = repo_params()
    assert rows == [
        {
            "key": "data.exclude_columns",
            "default": list(committed.data.exclude_columns),
            "value": ["a"],
        },
        {"key": "explain.slice_by", "default": list(committed.explain.slice_by), "value": ["a"]},
        {"key": "train.epochs", "default": committed.train.epochs, "value": 3},
    ]
    assert rp.params_diff(repo_params(), repo_params()) == []
    assert rp.params_diff(changed, None) == []


def test_params_section_shows_the_changes():
    html = _section(rp.build_report(_inputs()).html, "params")
    assert "train.learning_rate" in html and "0.0010" in html and "0.0100" in html
    assert "train.batch_size" not in html


def test_validation_failures_come_first_and_are_marked():
    html = _section(rp.build_report(_inputs()).html, "validation")
    assert "2 expectations, 1 failed" in html
    assert html.index("values_between") < html.index("row_count")
    assert "data rejected" in html


def test_fit_metrics_slices_registry_and_lineage():
    html = rp.build_report(_inputs()).html
    assert "good fit" in _section(html, "fit")
    assert "0.9412" in _section(html, "metrics")
    slices = _section(html, "slices")
    assert "zero&lt;b&gt;" in slices and "zero<b>" not in slices  # values are escaped
    assert "No change needed &lt;for now&gt;" in _section(html, "fit")
    registry = _section(html, "registry")
    assert "version <b>4</b>" in registry and "@champion" in registry
    assert re.search(r'<tr class="bad">\s*<td>good_fit</td>', registry)
    assert "<td>min_test_accuracy</td>" in registry
    lineage = _section(html, "lineage")
    assert "abc123" in lineage and "f" * 40 in lineage and "d" * 64 in lineage


def test_csv_run_shows_importances():
    explain = {"kind": "permutation", "repeats": 3, "importances": [
        {"rank": 1, "feature": "income", "importance_mean": 0.2, "importance_std": 0.01},
        {"rank": 2, "feature": "age", "importance_mean": 0.05, "importance_std": 0.02},
    ]}  # fmt: skip
    report = rp.build_report(
        _inputs(explain=explain, images={"importances.png": _tiny_png("green")})
    )
    html = _section(report.html, "explain")
    assert 'alt="feature importances"' in html and "income" in html
    assert "attribution grid" not in html
    assert "| 1 | income | 0.2000 |" in report.markdown


def test_missing_inputs_leave_visible_gaps():
    report = rp.build_report(rp.ReportInputs(params=repo_params()))
    for section in ("validation", "learning-curves", "fit", "metrics", "confusion", "explain"):
        assert 'class="muted"' in _section(report.html, section), section
    assert "<img" not in report.html
    assert "**Fit:** unknown" in report.markdown


def test_markdown_summary_for_ci():
    md = rp.build_report(_inputs()).markdown
    assert md.startswith("## nnops run report: digits")
    assert "- **Data validation:** failed (1 of 2 expectations failed)" in md
    assert "- **Fit:** good fit" in md
    assert "| test | 0.9412 | 0.9400 | 0.2500 |" in md
    assert "| `train.epochs` | 20 | 3 |" in md
    assert "| class | zero&lt;b&gt; | 10 | 0.7000 | 0.1500 |" in md
    assert "version 4, alias @champion" in md
    assert "<img" not in md
