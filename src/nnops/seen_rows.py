"""Which rows a model learned from, so that it is never scored on them as if they were new.

The train stage logs a digest of every training and validation row (``lineage/seen_rows.npy``,
8 bytes a row). When the register gate has to rescore the champion on other test data (the data
was reshuffled, rows were appended), it looks the new test rows up in the champion's digests:
rows the champion trained on would flatter it, so both models are compared on the rest only.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("nnops.register")

ARTIFACT_DIR = "lineage"
ARTIFACT_NAME = "seen_rows.npy"
ARTIFACT = f"{ARTIFACT_DIR}/{ARTIFACT_NAME}"


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
