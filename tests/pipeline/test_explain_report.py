"""explain and report in real `dvc repro` runs: digits grids, a csv run with slices, failures."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import dvc, make_project, project_env, run, set_params

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def _artifacts(root: Path, folder: str) -> list[str]:
    import mlflow

    info = json.loads((root / "models" / "run.json").read_text())
    client = mlflow.MlflowClient(info["tracking_uri"])
    return sorted(a.path for a in client.list_artifacts(info["run_id"], folder))


def test_default_run_draws_both_grids_and_the_report(reproduced_project: Path):
    root = reproduced_project
    explain = root / "reports" / "explain"
    for name in ("attributions.png", "misclassified.png"):
        _png(explain / name)
    summary = json.loads((explain / "explain.json").read_text())
    assert summary["kind"] == "attribution" and summary["method"] == "integrated_gradients"
    assert len(summary["examples_per_class"]) == 10
    assert "importances.png" not in summary["files"]
    slices = json.loads((explain / "slices.json").read_text())
    assert len(slices["classes"]) == 10 and slices["slices"] == []
    # explain took evaluate's test probabilities (made from this model) instead of rescoring
    from nnops.io import file_sha256

    with np.load(root / "reports" / "predictions.npz") as npz:
        assert str(npz["model_sha256"]) == file_sha256(root / "models" / "model.keras")
        predicted = npz["proba"].argmax(axis=1)
    with np.load(root / "data" / "processed" / "test.npz") as npz:
        accuracy = float((predicted == npz["y"]).mean())
    assert slices["overall"]["accuracy"] == pytest.approx(accuracy)
    assert json.loads((root / "reports" / "metrics.json").read_text())["test"]["accuracy"] == (
        pytest.approx(accuracy)
    )

    html = (root / "reports" / "report.html").read_text()
    md = (root / "reports" / "report.md").read_text()
    run_id = json.loads((root / "models" / "run.json").read_text())["run_id"]
    data_hash = json.loads((root / "data" / "processed" / "meta.json").read_text())["data_hash"]
    commit = run(["git", "rev-parse", "HEAD"], cwd=root).stdout.strip()
    for text in (html, md):
        assert run_id in text and data_hash in text and commit in text
    assert 'alt="attribution grid" src="data:image/png;base64,' in html
    assert 'alt="misclassified examples" src="data:image/png;base64,' in html
    # The report lists params that differ from the committed params.yaml (code holds no
    # defaults); this run used the committed ones.
    assert "All params are as committed." in md
    assert _artifacts(root, "report") == ["report/report.html", "report/report.md"]
    assert {"explain/attributions.png", "explain/misclassified.png"} <= set(
        _artifacts(root, "explain")
    )
    status = dvc("status", cwd=root).stdout
    assert "changed" not in status, status


def _write_csv(path: Path) -> None:
    """Six numeric features (two carry the class) and a region column.

    Labels in the south are half noise, so that slice must come out flagged.
    """
    rng = np.random.default_rng(7)
    n = 1200
    x = rng.normal(size=(n, 6)) * 2.0 + 5.0
    # Three equal classes: f1 in its lowest third, else f4 below or above its median.
    low = x[:, 1] < np.quantile(x[:, 1], 1 / 3)
    y = np.where(low, 0, np.where(x[:, 4] < np.median(x[:, 4]), 1, 2))
    region = rng.choice(["north", "south", "east"], size=n)
    noisy = (region == "south") & (rng.random(n) < 0.5)
    y[noisy] = rng.integers(0, 3, size=int(noisy.sum()))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*(f"f{i}" for i in range(6)), "region", "target"])
        for row, r, t in zip(x, region, y, strict=True):
            writer.writerow([*(f"{v:.4f}" for v in row), r, t])


@pytest.fixture(scope="module")
def csv_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("csv") / "repo"
    root.mkdir(parents=True)
    _write_csv(root / "table.csv")
    params = {
        "data": {"source": "csv", "path": "table.csv", "label_column": "target",
                 "exclude_columns": ["region"]},
        "train": {"epochs": 15},
        "explain": {"repeats": 3},
        "register": {"min_test_accuracy": 0.3, "require_good_fit": False},
    }  # fmt: skip
    make_project(root, params)
    # An uncommitted change, as an experiment makes: the report lists it against the commit.
    set_params(root, {"explain": {"slice_by": ["region"]}})
    dvc("repro", cwd=root)
    return root


def test_csv_run_ranks_features_and_flags_the_noisy_slice(csv_project: Path):
    explain = csv_project / "reports" / "explain"
    _png(explain / "importances.png")
    with (explain / "importances.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert {r["feature"] for r in table[:2]} == {"f1", "f4"}
    assert len(table) == 6
    with (explain / "slices.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["column"] == "region"]
    by_value = {r["value"]: r for r in rows}
    assert set(by_value) == {"north", "south", "east"}
    assert by_value["south"]["flagged"] == "True"
    assert float(by_value["south"]["accuracy"]) < float(by_value["north"]["accuracy"])
    assert (
        sum(int(r["support"]) for r in rows)
        == json.loads((csv_project / "data" / "processed" / "meta.json").read_text())["splits"][
            "test"
        ]
    )

    html = (csv_project / "reports" / "report.html").read_text()
    md = (csv_project / "reports" / "report.md").read_text()
    assert 'alt="feature importances" src="data:image/png;base64,' in html
    assert "attribution grid" not in html
    assert "| region | south |" in md
    assert "| `explain.slice_by` | [] | region |" in md


def test_explain_params_rerun_only_explain_and_report(csv_project: Path):
    set_params(csv_project, {"explain": {"repeats": 2, "slice_max_gap": 0.1}})
    try:
        status = json.loads(dvc("status", "--json", cwd=csv_project).stdout)
        assert sorted(status) == ["check_params", "explain", "report"]
    finally:
        set_params(csv_project, {"explain": {"repeats": 3, "slice_max_gap": 0.05}})
    assert json.loads(dvc("status", "--json", cwd=csv_project).stdout) == {}


def test_bad_slice_column_fails_before_touching_outputs(csv_project: Path, tmp_path: Path):
    before = {p.name: p.read_bytes() for p in (csv_project / "reports" / "explain").iterdir()}
    params = tmp_path / "params.yaml"
    params.write_text((csv_project / "params.yaml").read_text())
    set_params(tmp_path, {"explain": {"slice_by": ["regoin"]}})
    proc = run(
        [sys.executable, "pipelines/explain.py", "--params", str(params)],
        cwd=csv_project,
        env=project_env(),
        check=False,
    )
    assert proc.returncode == 2
    # refused by the params check, before any data is read
    assert proc.stderr.startswith(f"explain: error: {params}: invalid params")
    assert "explain.slice_by: column(s) 'regoin' not found in data.exclude_columns" in proc.stderr
    assert "available slice columns: region); did you mean 'region'?" in proc.stderr
    after = {p.name: p.read_bytes() for p in (csv_project / "reports" / "explain").iterdir()}
    assert after == before


def test_bad_slice_column_stops_dvc_repro(csv_project: Path):
    set_params(csv_project, {"explain": {"slice_by": ["region", "colour"]}})
    try:
        proc = dvc("repro", cwd=csv_project, check=False)
        assert proc.returncode != 0
        assert "'colour' not found" in proc.stderr + proc.stdout
    finally:
        set_params(csv_project, {"explain": {"slice_by": ["region"]}})


def test_unreadable_model_is_named(csv_project: Path, tmp_path: Path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a model")
    proc = run(
        [sys.executable, "pipelines/explain.py", "--model", str(bad), "--out", str(tmp_path / "o")],
        cwd=csv_project,
        env=project_env(),
        check=False,
    )
    assert proc.returncode == 2
    assert f"explain: error: {bad}: cannot load the Keras model" in proc.stderr
    assert not (tmp_path / "o").exists()
