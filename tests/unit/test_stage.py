"""What every stage shares: unwritable outputs found early and reported in one line."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import pytest

from nnops.errors import NnopsError
from nnops.io import require_writable
from nnops.stage import run_stage

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_require_writable_creates_folders_and_leaves_nothing_behind(tmp_path: Path):
    folders = [tmp_path / "models", tmp_path / "models" / "backup", tmp_path / "reports/train"]
    require_writable(folders, "the model")
    assert all(f.is_dir() for f in folders)
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["backup"]


def test_require_writable_names_a_folder_that_cannot_be_made(tmp_path: Path):
    (tmp_path / "models").write_text("a file where the folder should be")
    with pytest.raises(NnopsError) as err:
        require_writable([tmp_path / "models" / "backup"], "the resumable backup")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'models' / 'backup'}: cannot write there (")
    assert "writes the resumable backup there" in message and "nothing has run yet" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_require_writable_names_a_read_only_folder(tmp_path: Path):
    locked = tmp_path / "models"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(NnopsError, match=r"models: cannot write there \(Permission denied\)"):
            require_writable([locked], "the model")
    finally:
        locked.chmod(0o700)


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser()


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.ENOSPC])
def test_a_refused_write_ends_the_stage_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, code: int
):
    def body(args: argparse.Namespace, params: object) -> None:
        raise OSError(code, os.strerror(code), "models/backup/latest.weights.h5")

    monkeypatch.chdir(tmp_path)
    params = str(REPO / "params.yaml")
    assert run_stage("train", body, _parser(), ["--params", params]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"train: error: models/backup/latest.weights.h5: {os.strerror(code)}"
    assert "no earlier run of train is recorded in dvc.lock" in err[1] and len(err) == 2


def test_other_os_errors_are_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def body(args: argparse.Namespace, params: object) -> None:
        raise OSError(errno.EIO, "Input/output error", "x")

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="Input/output error"):
        run_stage("train", body, _parser(), ["--params", str(REPO / "params.yaml")])
