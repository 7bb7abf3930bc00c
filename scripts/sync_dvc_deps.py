"""Rewrite each dvc.yaml stage's src/nnops deps to its script's import closure.

Run after moving code between modules: ``python scripts/sync_dvc_deps.py``. The closure is the
one ``tests/unit/test_dvc_deps.py`` checks; comments and every other line of dvc.yaml stay.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _closure_fn():
    sys.path.insert(0, str(REPO / "tests"))
    spec = importlib.util.spec_from_file_location("dvc_deps", REPO / "tests/unit/test_dvc_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.import_closure


def main() -> int:
    closure = _closure_fn()
    path = REPO / "dvc.yaml"
    out: list[str] = []
    stage = None
    for line in path.read_text().splitlines():
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            stage = m.group(1)
        if re.match(r"^\s+- src/nnops/", line):
            continue  # regenerated below
        out.append(line)
        dep = re.match(r"^(\s+)- pipelines/(\w+)\.py\s*$", line)
        if dep and stage == dep.group(2):
            script = REPO / "pipelines" / f"{stage}.py"
            out.extend(f"{dep.group(1)}- {p}" for p in sorted(closure(script)))
    path.write_text("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
