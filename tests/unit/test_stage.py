"""What every stage shares: unwritable outputs found early and reported in one line."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import pytest

from conftest import read_only
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


def test_require_writable_names_a_read_only_folder(tmp_path: Path):
    """chmod for a user; root writes through permissions, so an immutable folder for root (as
    `chattr +i models/backup` did by hand)."""
    locked = tmp_path / "models"
    locked.mkdir()
    with (
        read_only(locked) as why,
        pytest.raises(NnopsError, match=rf"models: cannot write there \({why}\)"),
    ):
        require_writable([locked], "the model")


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


def test_a_full_disk_without_a_file_name_says_where_and_how_much_is_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    """A write to an open file (h5py, sqlite) fails with ENOSPC naming no file: it said only
    'train: error: No space left on device'."""

    def body(args: argparse.Namespace, params: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.chdir(tmp_path)
    assert run_stage("train", body, _parser(), ["--params", str(REPO / "params.yaml")]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(
        f"train: error: No space left on device while writing under {tmp_path} ("
    )
    assert first.endswith(" MiB free there); free some space and rerun")


def test_other_os_errors_are_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def body(args: argparse.Namespace, params: object) -> None:
        raise OSError(errno.EIO, "Input/output error", "x")

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="Input/output error"):
        run_stage("train", body, _parser(), ["--params", str(REPO / "params.yaml")])
