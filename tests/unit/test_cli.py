"""The ``nnops`` command dispatches to its subcommands and rejects unknown ones."""

from __future__ import annotations

import subprocess

import pytest

from conftest import BIN, project_env
from nnops import cli

pytestmark = pytest.mark.unit


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out


def test_unknown_command_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_every_command_module_has_main() -> None:
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        assert callable(importlib.import_module(module).main), name


def test_console_script_runs_predict_with_its_own_prog(tmp_path) -> None:
    proc = subprocess.run(
        [str(BIN / "nnops"), "predict", "--model", str(tmp_path / "none.keras"),
         "--input", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "p.csv")],
        capture_output=True, text=True, env=project_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("nnops predict: error:"), proc.stderr
