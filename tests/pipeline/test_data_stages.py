"""The data stages under real DVC: ingest -> validate -> preprocess in a temporary repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import dvc, make_project, set_params

pytestmark = pytest.mark.pipeline

DATA_STAGES = ("ingest", "validate", "preprocess")


def ran(output: str) -> set[str]:
    """The stages a ``dvc repro`` / ``dvc exp run`` output says it ran."""
    return {s for s in DATA_STAGES if f"Running stage '{s}'" in output}


def write_csv(path: Path, rows: int = 600, bad: str | None = None) -> Path:
    """A user's CSV: two numeric features, a text slice column, string labels."""
    rng = np.random.default_rng(0)
    kind = np.resize(["setosa", "versicolor", "virginica"], rows)
    frame = pd.DataFrame(
        {
            "petal": rng.normal(3, 1, rows) + (kind == "virginica"),
            "sepal": rng.normal(5, 1, rows),
            "garden": np.resize(["north", "south"], rows),
            "species": kind,
        }
    )
    if bad == "infinite":
        frame.loc[7, "sepal"] = np.inf
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def data_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh repository after one ``dvc repro preprocess`` on the default digits source."""
    root = make_project(tmp_path_factory.mktemp("data-stages") / "repo")
    out = dvc("repro", "preprocess", cwd=root).stdout
    return root, out


def test_repro_runs_the_data_stages_and_writes_the_contract(data_project):
    root, out = data_project
    assert ran(out) == set(DATA_STAGES)
    raw_meta = json.loads((root / "data/raw/meta.json").read_text())
    assert raw_meta["source"] == "digits" and raw_meta["n_rows"] == 1797
    assert pd.read_parquet(root / "data/raw/data.parquet").shape == (1797, 66)
    report = json.loads((root / "reports/validation/validation.json").read_text())
    assert report["success"] and report["content_hash"] == raw_meta["content_hash"]
    shown = min(len(report["drift"]["features"]), 30)  # the drift table below the checks
    assert (root / "reports/validation/validation.html").read_text().count("<tr class=") == len(
        report["expectations"]
    ) + shown
    meta = json.loads((root / "data/processed/meta.json").read_text())
    total = 0
    for split in ("train", "val", "test"):
        with np.load(root / f"data/processed/{split}.npz", allow_pickle=False) as npz:
            assert npz["x"].shape[1] == 64 and npz["x"].min() >= 0 and npz["x"].max() <= 1
            assert len(npz["y"]) == meta["splits"][split]
            total += len(npz["y"])
    assert total == 1797
    assert json.loads((root / "data/processed/preprocessing.json").read_text())["scale"] == 1 / 16
    assert not (root / "gx").exists() and not (root / "great_expectations").exists()


def test_second_repro_reruns_nothing(data_project):
    root, _ = data_project
    out = dvc("repro", "preprocess", cwd=root).stdout
    assert ran(out) == set(), out
    assert "Data and pipelines are up to date" in out


def test_train_params_do_not_touch_the_data_stages(data_project):
    root, _ = data_project
    original = (root / "params.yaml").read_text()
    try:
        set_params(root, {"train": {"epochs": 2, "learning_rate": 0.01}})
        status = dvc("status", "--with-deps", "preprocess", "--json", cwd=root).stdout
        assert set(json.loads(status)) == {"check_params"}, status  # it reads every key
        set_params(root, {"split": {"seed": 7}})  # positive control: this one must rerun
        status = dvc("status", "--with-deps", "preprocess", cwd=root).stdout
        assert "validate" in status and "preprocess" in status and "ingest" not in status
    finally:
        (root / "params.yaml").write_text(original)
    assert ran(dvc("repro", "preprocess", cwd=root).stdout) == set()


def test_bad_csv_fails_validate_and_preprocess_does_not_run(tmp_path: Path):
    root = make_project(tmp_path / "repo")
    csv = write_csv(root / "mydata/garden.csv", bad="infinite")
    set_params(
        root,
        {"data": {"source": "csv", "path": "mydata/garden.csv", "label_column": "species",
                  "exclude_columns": ["garden"]}},
    )  # fmt: skip
    proc = dvc("repro", "preprocess", cwd=root, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "validate: FAILED no_infinite_features: column sepal: observed 1, bound 0" in output
    assert "Running stage 'preprocess'" not in output
    assert not (root / "data/processed").exists()
    assert csv.exists()
    report = json.loads((root / "reports/validation/validation.json").read_text())
    assert report["n_failed"] == 1


def test_csv_through_dvc_exp_run(tmp_path: Path):
    root = make_project(tmp_path / "repo")
    write_csv(root / "mydata/garden.csv")
    out = dvc(
        "exp", "run", "preprocess", "-S", "data.source=csv", "-S", "data.path=mydata/garden.csv",
        "-S", "data.label_column=species", "-S", "data.exclude_columns=[garden]",
        cwd=root,
    ).stdout  # fmt: skip
    assert ran(out) == set(DATA_STAGES)
    meta = json.loads((root / "data/processed/meta.json").read_text())
    assert meta["source"] == "csv" and meta["class_names"] == ["setosa", "versicolor", "virginica"]
    assert meta["slice_columns"] == ["garden"] and sum(meta["splits"].values()) == 600
    prep = json.loads((root / "data/processed/preprocessing.json").read_text())
    assert prep["method"] == "standardize" and len(prep["mean"]) == 2
    with np.load(root / "data/processed/train.npz", allow_pickle=False) as npz:
        assert set(npz["slice__garden"]) == {"north", "south"}
        np.testing.assert_allclose(npz["x"].mean(axis=0), 0, atol=1e-5)
    assert "data.source" in dvc("exp", "show", "--csv", cwd=root).stdout


def test_a_key_no_stage_reads_fails_the_run_before_any_stage(data_project):
    """A misspelt section would leave every stage "up to date"; check_params refuses it."""
    root, _ = data_project
    original = (root / "params.yaml").read_text()
    raw = root / "data/raw/data.parquet"
    before = raw.read_bytes()
    try:
        (root / "params.yaml").write_text(original + "trian:\n  epochs: 5\n")
        proc = dvc("repro", "preprocess", cwd=root, check=False)
        assert proc.returncode != 0
        assert "trian: unknown key; did you mean 'train'?" in proc.stderr, proc.stderr
        assert "Running stage 'check_params'" in proc.stdout and ran(proc.stdout) == set()
        assert raw.read_bytes() == before  # DVC stopped before ingest: its output is untouched
    finally:
        (root / "params.yaml").write_text(original)
    out = dvc("repro", "preprocess", cwd=root).stdout
    assert ran(out) == set(), out  # the marker is unchanged, so nothing after it reruns
