"""pyproject.toml declares runtime dependencies as ranges; requirements.txt pins one set."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def read_lock(text: str) -> dict[str, Version]:
    """``name==version`` lines of a lock file by canonical name (comments and blanks skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def disagreements(pyproject: str, lock: str) -> list[str]:
    """Each way the declared ranges and the pinned lock disagree, one line each."""
    declared = [Requirement(d) for d in tomllib.loads(pyproject)["project"]["dependencies"]]
    pins = read_lock(lock)
    problems = []
    for req in declared:
        name = canonicalize_name(req.name)
        ops = {s.operator for s in req.specifier}
        if not (ops & {">=", ">", "~="} and ops & {"<", "<=", "~="}):
            problems.append(f"{req}: give a range with a lower and an upper bound")
        if name not in pins:
            problems.append(f"{req}: not pinned in requirements.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req}: the pin {name}=={pins[name]} is outside the range")
        for extra in sorted(req.extras):  # psycopg[binary] needs psycopg-binary pinned too
            if canonicalize_name(f"{req.name}-{extra}") not in pins:
                problems.append(f"{req}: {req.name}-{extra} is not pinned in requirements.txt")
    return problems


def test_every_runtime_dependency_is_a_range_that_holds_its_pin():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert tomllib.loads(pyproject)["project"]["dependencies"], "no runtime dependencies declared"
    assert disagreements(pyproject, (REPO / "requirements.txt").read_text()) == []


def test_the_check_catches_a_pin_outside_the_range_and_a_missing_pin():
    pyproject = '[project]\ndependencies = ["numpy>=2.4,<3", "keras>=3,<4", "dvc", "a[b]>=1,<2"]\n'
    lock = "numpy==1.26.4\n# a comment\ndvc==3.67.1\na==1.0\n"
    assert disagreements(pyproject, lock) == [
        "numpy<3,>=2.4: the pin numpy==1.26.4 is outside the range",
        "keras<4,>=3: not pinned in requirements.txt",
        "dvc: give a range with a lower and an upper bound",
        "a[b]<2,>=1: a-b is not pinned in requirements.txt",
    ]


def _third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in src/nnops and pipelines/, less stdlib and nnops."""
    names = set()
    for path in [*(REPO / "src/nnops").rglob("*.py"), *(REPO / "pipelines").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"nnops", "__future__"}


def test_every_imported_package_is_declared():
    declared = {
        canonicalize_name(Requirement(d).name)
        for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    owners = packages_distributions()
    missing = {
        module: owners.get(module)
        for module in _third_party_imports()
        if not declared & {canonicalize_name(d) for d in owners.get(module, [])}
    }
    assert missing == {}, "imported but not in pyproject's dependencies"


def test_requires_python_admits_the_running_and_the_oldest_supported_interpreter():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    supported = SpecifierSet(project["requires-python"])
    assert "3.11" in supported  # the oldest supported, which CI runs
    assert "3.10" not in supported
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in supported
