"""The training backup's lifecycle: keep the one that matches, clear the rest, empty on success.

The backup folder (``models/backup``) holds what ``callbacks.Backup`` writes each epoch, plus
``state.json``: the fingerprint of the params and data it belongs to and the MLflow run an
interrupted execution started. It is not a DVC output (git ignores it): DVC neither deletes it
before train reruns nor records it in dvc.lock, so a clone that pulled the outputs, or a
``dvc checkout`` after ``rm -rf models``, is up to date without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnops.config import TrainParams
from nnops.io import read_json, write_json

log = logging.getLogger(__name__)

EMPTY_MARK = "EMPTY"  # what an older nnops left in a cleared backup folder (a DVC output then)
STATE_JSON = "state.json"


def fingerprint(params: TrainParams, data_hash: str, n_features: int) -> str:
    """Identify what a backup belongs to: the train params and the data.

    Args:
        params: the ``train`` params section.
        data_hash: ``data_hash`` of the processed data.
        n_features: width of the input.
    """
    blob = json.dumps([params.model_dump(mode="json"), data_hash, n_features], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_backup(
    folder: str | Path, params: TrainParams, meta: Mapping[str, Any], n_features: int
) -> tuple[Path, dict[str, Any]]:
    """Keep a backup made with these params and data, clear any other; return it and its state.

    Args:
        folder: the backup folder (``models/backup``).
        params: the ``train`` params section.
        meta: ``data/processed/meta.json``.
        n_features: width of the training input.
    """
    folder = Path(folder)
    mark = fingerprint(params, str(meta.get("data_hash", "")), n_features)
    state_path = folder / STATE_JSON
    state = read_json(state_path) if state_path.exists() else {}
    if state.get("fingerprint") == mark and (folder / "latest.weights.h5").exists():
        return folder, state
    if folder.exists() and any(p.name != EMPTY_MARK for p in folder.iterdir()):
        log.info("discarding %s: it belongs to other params or data", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": mark, "run_id": None}
    write_json(state_path, state)
    return folder, state


def remember_run(folder: Path, state: Mapping[str, Any], run_id: str) -> None:
    """Record in the backup's state the MLflow run it belongs to (a rerun continues that run).

    Args:
        folder: the backup folder.
        state: its state from ``prepare_backup``.
        run_id: the run.
    """
    write_json(folder / STATE_JSON, {**state, "run_id": run_id})


def clear_backup(folder: str | Path) -> None:
    """Remove the backup folder after a successful run: there is nothing left to resume.

    Args:
        folder: the backup folder.
    """
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
