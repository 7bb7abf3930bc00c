"""nnops reproduce without a pipeline run: URIs, the data files a dvc.lock names, and refusals.

The refusals run against a real git repository; the full rebuild is in
tests/e2e/test_reproduce_registered.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import project_env
from nnops.errors import NnopsError
from nnops.reproduce import Lineage, check_reproducible, data_inputs, file_md5, parse_model_uri

pytestmark = pytest.mark.unit


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=root, env=project_env(), capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def _lineage(commit: str, dirty: str = "false", lock: dict | None = None, exp=None) -> Lineage:
    return Lineage(
        model_uri="models:/m@champion", name="m", version="3", run_id="r1", commit=commit,
        dirty=dirty, data_hash="h", device="CPU:0", exp_name=exp, metrics={}, lock=lock,
    )  # fmt: skip


def _lock(path: str, md5: str) -> dict:
    deps = [{"path": "src/nnops/ingest.py", "md5": "x"}, {"path": path, "md5": md5}]
    return {"stages": {"ingest": {"deps": deps}}}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-qm", "c")
    return tmp_path


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/nnops-mlp@champion") == ("nnops-mlp", "champion", None)
    assert parse_model_uri("models:/nnops-mlp/7") == ("nnops-mlp", None, "7")
    with pytest.raises(NnopsError, match="models:/NAME@ALIAS"):
        parse_model_uri("runs:/abc/model")


def test_data_inputs_skip_code_and_urls() -> None:
    lock = _lock("inputs/my.csv", "abc")
    lock["stages"]["ingest"]["deps"].append({"path": "https://h/x.csv", "checksum": "1"})
    assert data_inputs(lock) == [("inputs/my.csv", "abc")]
    assert data_inputs(None) == []


def test_refuses_missing_commit_and_dirty_workspace(repo: Path) -> None:
    with pytest.raises(NnopsError, match="git commit 0{40} is missing"):
        check_reproducible(_lineage("0" * 40), repo)
    head = _git(repo, "rev-parse", "HEAD")
    with pytest.raises(NnopsError, match="workspace was dirty"):
        check_reproducible(_lineage(head, dirty="true"), repo)
    with pytest.raises(NnopsError, match="recorded no git commit"):
        check_reproducible(_lineage("unknown"), repo)
    with pytest.raises(NnopsError, match="experiment 'exp-1'"):
        check_reproducible(_lineage(head, exp="exp-1"), repo)


def test_data_file_must_match_the_recorded_hash(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    data = repo / "inputs" / "my.csv"
    data.parent.mkdir()
    data.write_text("a,label\n1,0\n")
    md5 = file_md5(data)
    commit, files = check_reproducible(_lineage(head, lock=_lock("inputs/my.csv", md5)), repo)
    assert commit == head and files == [("inputs/my.csv", data)]
    data.write_text("a,label\n2,0\n")
    with pytest.raises(NnopsError, match=r"data hash mismatch: data file inputs/my.csv changed"):
        check_reproducible(_lineage(head, lock=_lock("inputs/my.csv", md5)), repo)
    # The old bytes in the DVC cache (a `dvc add`-ed file) are used instead.
    cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    cached.parent.mkdir(parents=True)
    cached.write_text("a,label\n1,0\n")
    _, files = check_reproducible(_lineage(head, lock=_lock("inputs/my.csv", md5)), repo)
    assert files == [("inputs/my.csv", cached)]


def test_missing_store_is_named_and_not_created(tmp_path: Path) -> None:
    from nnops.reproduce import read_lineage

    store = tmp_path / "mlflow.db"
    with pytest.raises(NnopsError, match="mlflow.db does not exist"):
        read_lineage("models:/m@champion", f"sqlite:///{store}")
    assert not store.exists()
