"""Small file helpers used at the stage edges: atomic writes, JSON, npz and params YAML."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

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


def require_writable(folders: list[Path], what: str, who: str = "this stage") -> None:
    """Fail before any work if a folder cannot be created or written into.

    Each folder is created if missing and a file is created in it and removed, so a read-only
    file system, missing permissions or an immutable folder are found at the start of a stage,
    not after an hour of training.

    Args:
        folders: the folders the stage will write into.
        what: what the stage writes there, for the message.
        who: the stage or command, for the message.
    """
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(prefix=".nnops-write-check-", dir=folder):
                pass
        except OSError as exc:
            raise NnopsError(
                f"{folder}: cannot write there ({exc.strerror or exc}); {who} writes "
                f"{what} there. Fix its permissions or free space and rerun: nothing has run yet"
            ) from None


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


def plain(value: Any) -> Any:
    """Turn numpy scalars and containers into JSON-friendly Python values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def load_npz(path: str | Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` of an ``.npz`` file, naming the file and key when one is wrong.

    Every npz this project reads goes through here; the catalog and the readers of user files
    (sources, batches) say which keys they need.

    Args:
        path: the ``.npz`` file.
        keys: the arrays to read (all must be present).
        what: what the file should be, for messages (e.g. ``"an npz source (data.path)"``).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                names = ", ".join(repr(k) for k in missing)
                raise NnopsError(
                    f"{path}: no array {names} (arrays: {', '.join(npz.files) or 'none'}); "
                    f"{what} needs {', '.join(keys)}"
                )
            return {k: npz[k] for k in keys}
    except FileNotFoundError:
        raise NnopsError(f"{path}: file not found; expected {what}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise NnopsError(f"{path}: cannot read as npz ({exc}); expected {what}") from None


class _ParamsLoader(yaml.SafeLoader):
    """YAML as DVC reads and writes ``params.yaml``: numbers by YAML 1.2, so ``1e-05`` (what
    ``dvc exp run -S train.l2=1e-05`` writes) is a float, not the string PyYAML's 1.1 rules make it.
    """


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """Parse a params document with the YAML number rules DVC uses.

    Args:
        text: the YAML text.
    """
    return yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader subclass)


def file_sha256(path: str | Path) -> str:
    """Return the sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
