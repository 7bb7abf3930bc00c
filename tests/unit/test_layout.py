"""The test tree itself: pytest imports test files by basename (no packages), so two files with
the same name in different tiers would stop the whole suite at collection."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit


def test_test_file_basenames_are_unique_across_tiers() -> None:
    names = Counter(p.name for p in (REPO / "tests").rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1], names


def test_the_resumable_backup_is_never_committed():
    """DVC ignores only cached outputs; models/backup is not cached, so git must ignore it."""
    import subprocess

    for path in ("models/backup/latest.weights.h5", "models/backup/state.json"):
        proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False)
        assert proc.returncode == 0, f"{path} is not ignored by git"
