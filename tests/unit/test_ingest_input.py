"""fetch.source_file: which file an npz / csv source reads, and the checks before it is read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import section
from nnops.config import PLACEHOLDER
from nnops.errors import NnopsError
from nnops.fetch import source_file

pytestmark = pytest.mark.unit


def test_placeholder_is_refused_for_file_sources() -> None:
    # Refused when params are read, before any stage runs.
    with pytest.raises(ValueError, match=r"data.source='csv' needs data.path .* placeholder"):
        section("data", source="csv", path=PLACEHOLDER)


def test_params_yaml_default_is_the_tracked_placeholder() -> None:
    import yaml

    from conftest import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["data"]["path"] == PLACEHOLDER and (REPO / PLACEHOLDER).is_file()


def test_local_file_is_checked_against_sha256(tmp_path: Path) -> None:
    data = tmp_path / "t.csv"
    data.write_text("a,label\n1,0\n")
    good = hashlib.sha256(data.read_bytes()).hexdigest()
    assert source_file(section("data", source="csv", path=str(data), sha256=good.upper())) == data
    with pytest.raises(NnopsError, match=rf"t.csv: sha256 is {good}, expected 0+ \(data.sha256\)"):
        source_file(section("data", source="csv", path=str(data), sha256="0" * 64))
