"""Small file helpers used at the stage edges: atomic writes and JSON."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nnops.errors import NnopsError


def _umask() -> int:
    """Read the process umask without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place only on success.

    A failure inside the block leaves any existing ``target`` untouched.

    Args:
        target: the final file path.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give outputs the usual permissions (0666 less the umask).
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically.

    Args:
        path: the destination file.
        data: a JSON-serialisable object.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically.

    Args:
        path: the destination file.
        text: the content.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file when it is missing or malformed.

    Args:
        path: the file to read.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NnopsError(f"{path}: file not found (did the previous stage run?)") from None
    except json.JSONDecodeError as exc:
        raise NnopsError(f"{path}: not valid JSON ({exc})") from None


def repo_root() -> Path:
    """Return the main repository root.

    Under ``dvc exp run --queue`` a stage runs in a temporary copy of the workspace;
    DVC then sets ``DVC_ROOT`` to the main repository, which is where shared state
    such as the embedded MLflow store lives.
    """
    root = os.environ.get("DVC_ROOT")
    if root:
        return Path(root).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists() or (candidate / ".dvc").is_dir():
            return candidate
    return here
