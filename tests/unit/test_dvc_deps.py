"""dvc.yaml lists, for every stage, each src/nnops module its script imports, transitively.

The import closure is read from the source with ``ast`` (imports inside functions count: the
stages import their heavy modules lazily), so no TensorFlow or MLflow is imported here. A module
missing from a stage's deps would let DVC call a stale output current after a code change.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.unit

PACKAGE = "nnops"
SRC = REPO / "src" / PACKAGE
# The package's __init__ is imported by every stage but holds only the docstring and the version;
# it stays out of the deps so that a version bump does not rerun the pipeline. The last test
# guards that it stays that way.
SKIPPED = {"src/nnops/__init__.py"}


def _module_file(dotted: str) -> Path | None:
    """The file of ``nnops.a.b`` under src/, or None when it is not a module of the package."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = SRC.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[Path]:
    """src/nnops files that ``path`` imports anywhere in its body (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (
        ".".join(path.relative_to(REPO / "src").with_suffix("").parts[:-1])
        if path.is_relative_to(SRC)
        else ""
    )
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            # `import nnops.a.b` loads nnops.a too; `from nnops import x` may name a module.
            parts = name.split(".")
            for i in range(2, len(parts) + 1):
                file = _module_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return found


def _templates(path: Path) -> set[Path]:
    """Template files of the package (``src/nnops/templates/*.j2``) that ``path`` names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        SRC / "templates" / node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and node.value.endswith(".j2")
    }  # fmt: skip


def import_closure(script: Path) -> set[str]:
    """Repository-relative paths of every src/nnops module ``script`` imports, transitively,
    and of the package templates those modules render."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in _imported_modules(todo.pop()):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    templates = {t for module in seen for t in _templates(module)}
    return {p.relative_to(REPO).as_posix() for p in seen | templates} - SKIPPED


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _deps(stage: dict) -> set[str]:
    return {str(d) if not isinstance(d, dict) else next(iter(d)) for d in stage.get("deps", [])}


STAGES = sorted(_stages())


def missing_deps(name: str, stage: dict) -> list[str]:
    """Modules the stage's script imports that its deps do not list."""
    script = REPO / "pipelines" / f"{name}.py"
    return sorted(import_closure(script) - _deps(stage))


@pytest.mark.parametrize("name", STAGES)
def test_stage_deps_cover_the_import_closure(name: str) -> None:
    stage = _stages()[name]
    script = f"pipelines/{name}.py"
    assert script in stage["cmd"] and script in _deps(stage), f"stage {name}: deps lack {script}"
    missing = missing_deps(name, stage)
    assert not missing, (
        f"dvc.yaml stage {name!r}: {script} imports {', '.join(missing)} but the stage's deps "
        "do not list it; add it so that a change there reruns the stage"
    )


@pytest.mark.parametrize("name", STAGES)
def test_stage_deps_exist(name: str) -> None:
    # Templated deps (${...}) are resolved by DVC from params.yaml; they are checked by the
    # pipeline tests, not here.
    gone = [
        d
        for d in sorted(_deps(_stages()[name]))
        if "${" not in d and d.startswith(("src/", "pipelines/")) and not (REPO / d).exists()
    ]
    assert not gone, f"dvc.yaml stage {name!r}: dep(s) {', '.join(gone)} do not exist"


def test_closure_follows_function_level_and_transitive_imports(tmp_path: Path) -> None:
    # evaluate imports nnops.tracking inside a function; tracking imports config, errors and io.
    closure = import_closure(REPO / "pipelines" / "evaluate.py")
    assert {"src/nnops/tracking.py", "src/nnops/io.py", "src/nnops/config.py"} <= closure
    # And the check fails when a dep line is deleted, naming the stage and the file.
    stage = dict(_stages()["evaluate"])
    stage["deps"] = [d for d in stage["deps"] if d != "src/nnops/tracking.py"]
    assert missing_deps("evaluate", stage) == ["src/nnops/tracking.py"]


def test_package_init_holds_no_code() -> None:
    tree = ast.parse((SRC / "__init__.py").read_text())
    kinds = [type(node).__name__ for node in tree.body]
    assert kinds in (["Expr", "Assign"], ["Expr"]), (
        f"src/nnops/__init__.py now holds {kinds}; list it in every stage's deps in dvc.yaml "
        "and drop it from SKIPPED in this test"
    )
