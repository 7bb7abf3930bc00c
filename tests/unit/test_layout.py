"""The test tree itself: pytest imports test files by basename (no packages), so two files with
the same name in different tiers would stop the whole suite at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.unit


def test_test_file_basenames_are_unique_across_tiers() -> None:
    names = Counter(p.name for p in (REPO / "tests").rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1], names


def _outputs() -> dict[str, bool]:
    """Every output dvc.yaml declares (outs, metrics, plots): path -> whether DVC caches it."""
    import yaml

    found = {}
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for group in ("outs", "metrics", "plots"):
            for out in stage.get(group, []):
                path, opts = next(iter(out.items())) if isinstance(out, dict) else (out, {})
                found[path] = (opts or {}).get("cache", True)
    return found


def _ignored(path: str) -> bool:
    import subprocess

    proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, check=False)
    return proc.returncode == 0


def test_cached_outputs_are_git_ignored_from_the_start_and_uncached_ones_are_not():
    """What a failed first run leaves is never committed by `git add -A` (DVC would then refuse
    the output as tracked by git); the uncached outputs (metrics, train summary) live in git."""
    outputs = _outputs()
    assert "models/backup" not in outputs  # the resume point is no DVC output (dvc.lock)
    for path, cached in outputs.items():
        probe = f"{path}/any-file" if "." not in Path(path).name else path
        assert _ignored(probe) == cached, (path, "cached" if cached else "uncached")
    assert not [path for path, cached in outputs.items() if not cached and "." not in path]


def test_the_resumable_backup_is_never_committed():
    """models/backup is no DVC output, so git must ignore it."""
    for path in ("models/backup/latest.weights.h5", "models/backup/state.json"):
        assert _ignored(path), f"{path} is not ignored by git"
