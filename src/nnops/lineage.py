"""What a training run records about what it was built from, so its model can be traced back.

- ``git_state``: the commit checked out and whether tracked files differ from it (run tags);
- ``log_dvc_lock``: the ``dvc.lock`` as it stood, with the md5 of the user's data file and of
  every upstream output (artifact ``lineage/dvc.lock``, URL secrets masked);
- ``datasets``: the training and validation arrays, for ``mlflow.log_input``;
- the digests of every training and validation row (``lineage/seen_rows.npy``, 8 bytes a row).
  When the register gate has to rescore the champion on other test data (the data was
  reshuffled, rows were appended), it looks the new test rows up in the champion's digests: rows
  the champion trained on would flatter it, so both models are compared on the rest only.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnops.catalog import split_path

log = logging.getLogger(__name__)

ARTIFACT_DIR = "lineage"
ARTIFACT_NAME = "seen_rows.npy"
ARTIFACT = f"{ARTIFACT_DIR}/{ARTIFACT_NAME}"  # the seen-row digests


CHUNK_ROWS = 4096  # rows converted at a time: bounded memory at MNIST scale


def _digests(x: np.ndarray) -> np.ndarray:
    """One 64-bit digest per row of ``x``: its values as float32 (the dtype every split is read
    in; -0.0 counts as 0.0) hashed with BLAKE2b, a chunk of rows at a time."""
    x = np.asarray(x).reshape(len(x), -1)
    out = np.empty(len(x), dtype=np.uint64)
    for start in range(0, len(x), CHUNK_ROWS):
        rows = np.ascontiguousarray(x[start : start + CHUNK_ROWS], dtype=np.float32) + np.float32(0)
        out[start : start + len(rows)] = [
            int.from_bytes(hashlib.blake2b(row, digest_size=8).digest(), "little") for row in rows
        ]
    return out


def row_digests(*parts: np.ndarray | None) -> np.ndarray:
    """The sorted, unique digests of the feature rows of ``parts`` (None or empty parts skipped).

    Args:
        parts: raw feature arrays of shape (n, d).
    """
    found = [_digests(x) for x in parts if x is not None and len(x)]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)


def write_digests(folder: str | Path, *parts: np.ndarray | None) -> Path:
    """Write ``row_digests(*parts)`` to ``folder/seen_rows.npy`` and return its path.

    Args:
        folder: an existing folder (the train stage uses a temporary one).
        parts: the training and validation features.
    """
    path = Path(folder) / ARTIFACT_NAME
    np.save(path, row_digests(*parts), allow_pickle=False)
    return path


def unseen_mask(x: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """True for each row of ``x`` whose digest is not in ``seen``.

    Args:
        x: raw feature rows, shape (n, d).
        seen: sorted digests from ``row_digests``.
    """
    if len(x) == 0:
        return np.zeros(0, dtype=bool)
    return ~np.isin(_digests(x), seen)


def read_seen(client: Any, run_id: str) -> np.ndarray | None:
    """The digests a run logged, or None when it logged none (trained before they were kept).

    Args:
        client: an ``mlflow.MlflowClient``.
        run_id: the run that trained the model.
    """
    names = {Path(f.path).name for f in client.list_artifacts(run_id, ARTIFACT_DIR)}
    if ARTIFACT_NAME not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="nnops-seen-") as tmp:
        path = client.download_artifacts(run_id, ARTIFACT, tmp)
        seen = np.load(path, allow_pickle=False)
    if seen.dtype != np.uint64 or seen.ndim != 1:
        log.warning("run %s: %s is not a list of row digests; ignored", run_id, ARTIFACT)
        return None
    return seen


PIPELINE_WRITTEN = ("dvc.lock",)  # rewritten by the pipeline run itself


def git_state(root: Path) -> dict[str, str]:
    """Return the commit checked out at ``root`` and whether tracked files differ from it.

    Args:
        root: a directory inside the git work tree.
    """

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip()
    status = git("status", "--porcelain", "--untracked-files=no")
    # dvc.lock and the .gitignore files DVC keeps are rewritten by the pipeline run itself (each
    # finished stage updates them): they do not make the code or params differ from the commit.
    changed = [
        line[3:]
        for line in (status or "").splitlines()
        if line[3:] not in PIPELINE_WRITTEN and not line.endswith(".gitignore")
    ]
    return {
        "commit": commit or "unknown",
        "dirty": "unknown" if status is None else str(bool(changed)).lower(),
    }


LOCK_ARTIFACT = f"{ARTIFACT_DIR}/dvc.lock"


def log_dvc_lock(run_id: str, root: Path | None = None) -> None:
    """Attach the workspace's ``dvc.lock`` to the run (``lineage/dvc.lock``), if there is one,
    with the secrets of any URL in it masked.

    While a stage runs, ``dvc.lock`` holds the hashes of every stage DVC finished before it (the
    user's data file among the ingest deps), so the run carries the exact inputs it was built on.

    Args:
        run_id: the MLflow run.
        root: the repository root; the working directory when omitted.
    """
    import mlflow

    from nnops.secrets import redact_text

    lock = (root or Path.cwd()) / "dvc.lock"
    if not lock.is_file():
        return
    text = lock.read_text(encoding="utf-8")
    masked = redact_text(text)  # a URL dep with a query or user info (a lock written by hand)
    with tempfile.TemporaryDirectory(prefix="nnops-lock-") as tmp:
        if masked != text:
            lock = Path(tmp) / "dvc.lock"
            lock.write_text(masked, encoding="utf-8")
        mlflow.MlflowClient().log_artifact(run_id, str(lock), artifact_path="lineage")


def datasets(folder: str | Path, data: Any, meta: Mapping[str, Any]) -> list[tuple]:
    """``(context, features, targets, source, digest)`` of the arrays the model learned from.

    Args:
        folder: ``data/processed``.
        data: the ``TrainData``.
        meta: ``data/processed/meta.json``.
    """
    digest = str(meta.get("data_hash", ""))[:16] or None
    rows = [("training", data.x_train, data.y_train, str(split_path(folder, "train")), digest)]
    if data.x_val is not None:
        rows.append(("validation", data.x_val, data.y_val, str(split_path(folder, "val")), digest))
    return rows
