"""Real public datasets through ``data.source=csv`` and default params: validate passes.

scikit-learn's bundled iris, wine and breast_cancer, exported to CSV with string class labels,
run through the real ``dvc repro`` up to preprocess; then the project's training profile checks
a batch with ``nnops validate-batch``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, dvc, make_project, project_env, run

pytestmark = pytest.mark.pipeline


def export(name: str, path: Path) -> None:
    """Write a bundled scikit-learn dataset as a user's CSV, labels as class names."""
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    table = bunch.frame.copy()
    table["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer"])
def test_default_params_pass_validate_on_real_csv(tmp_path: Path, name: str):
    root = tmp_path / "repo"
    export(name, root / "table.csv")
    make_project(root, {"data": {"source": "csv", "path": "table.csv", "label_column": "target"}})
    dvc("repro", "preprocess", cwd=root)
    report = json.loads((root / "reports/validation/validation.json").read_text())
    assert report["success"] and report["n_failed"] == 0
    assert report["drift"]["method"] == "ks" and report["drift"]["n_drifted"] == 0
    profile = json.loads((root / "reports/validation/profile.json").read_text())
    assert profile["label_column"] == "target" and profile["value_bounds"] == [None, None]
    if name != "iris":
        return
    assert profile["class_names"] == ["setosa", "versicolor", "virginica"]
    # the user's own file, label column included, is a clean batch for the project's profile
    clean = run([str(BIN / "nnops"), "validate-batch", "table.csv"], cwd=root, env=project_env())
    assert "table.csv: passed" in clean.stdout and (root / "table.csv.validation.html").exists()
    (root / "short.csv").write_text((root / "table.csv").read_text().replace("sepal width", "x"))
    bad = run([str(BIN / "nnops"), "validate-batch", "short.csv"], cwd=root, check=False)
    assert bad.returncode == 2
    assert "FAILED schema_columns: column missing column(s) sepal width (cm); " in bad.stderr
