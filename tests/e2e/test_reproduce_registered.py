"""`nnops reproduce`: a registered champion reruns, in a temporary git worktree, to the same bytes.

A fresh project with a user CSV (outside git) is reproduced and committed clean; its first model
becomes @champion. `nnops reproduce models:/nnops-mlp@champion` must then rebuild it with identical
weights, test metrics and data hash, leave the workspace and the user's MLflow store alone, and,
once the CSV behind that version is edited, refuse naming the data hash mismatch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, CSV_PARAMS, dvc, edit_csv_cell, make_project, run, write_digits_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

URI = "models:/nnops-mlp@champion"


def _runs(root: Path) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(exps))


def _reproduce(root: Path) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "nnops"), "reproduce", URI], cwd=root, check=False, timeout=1200)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("reproduce") / "repo", CSV_PARAMS)
    write_digits_csv(root / "inputs" / "digits.csv")
    dvc("repro", cwd=root)
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert registry["alias"] == "champion", registry
    return root


def test_champion_reruns_to_identical_weights_and_metrics(champion: Path) -> None:
    before_status = run(["git", "status", "--porcelain"], cwd=champion).stdout
    before_runs = _runs(champion)
    proc = _reproduce(champion)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout
    for row in ("weights sha256", "data hash", "test.accuracy", "test.loss"):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert line.rstrip().endswith("ok"), table
    assert "DIFFERS" not in table and "bit-identical" in table
    # The user's workspace, git worktrees and MLflow store are as they were.
    assert run(["git", "status", "--porcelain"], cwd=champion).stdout == before_status
    assert run(["git", "worktree", "list"], cwd=champion).stdout.count("\n") == 1
    assert _runs(champion) == before_runs


def test_edited_csv_is_refused_naming_the_data_hash(champion: Path) -> None:
    edit_csv_cell(champion / "inputs" / "digits.csv")
    proc = _reproduce(champion)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data hash mismatch" in proc.stderr and "inputs/digits.csv" in proc.stderr
    assert "Traceback" not in proc.stderr
