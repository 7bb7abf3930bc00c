"""The catalog of hand-over files: every file one stage writes and another reads.

dvc.yaml's ``cmd``, ``deps`` and ``outs`` name these paths; the stage scripts take them as their
argparse defaults and the library reads and writes them through the helpers here, so a file's
name and layout are written down once. Paths are relative to the project root.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nnops.errors import NnopsError

# --- check_params -> ingest (a marker whose content never changes) ---------------------------
PARAMS_CHECKED = Path("reports/params_checked.txt")

# --- ingest -> validate, preprocess ---------------------------------------------------------
RAW_DIR = Path("data/raw")
RAW_TABLE = "data.parquet"  # inside RAW_DIR
RAW_META = "meta.json"  # inside RAW_DIR

# --- validate -> preprocess, train, report; nnops validate-batch ----------------------------
VALIDATION_DIR = Path("reports/validation")
VALIDATION_JSON = "validation.json"
VALIDATION_HTML = "validation.html"
PROFILE_JSON = "profile.json"

# --- preprocess -> train, evaluate, explain, register ---------------------------------------
PROCESSED_DIR = Path("data/processed")
SPLITS = ("train", "val", "test")
PROCESSED_META = "meta.json"
PREPROCESSING_JSON = "preprocessing.json"

# --- train -> evaluate, register, report ----------------------------------------------------
MODELS_DIR = Path("models")
MODEL = MODELS_DIR / "model.keras"
RUN_INFO = MODELS_DIR / "run.json"
BACKUP_DIR = MODELS_DIR / "backup"
TRAIN_REPORTS = Path("reports/train")
HISTORY_CSV = TRAIN_REPORTS / "history.csv"
TRAIN_SUMMARY = TRAIN_REPORTS / "summary.json"

# --- evaluate -> register, report -----------------------------------------------------------
REPORTS_DIR = Path("reports")
METRICS_JSON = REPORTS_DIR / "metrics.json"
EVALUATION_JSON = REPORTS_DIR / "evaluation.json"
PLOTS_DIR = REPORTS_DIR / "plots"
# evaluate -> explain: the test split's class probabilities, so explain does not score it again
PREDICTIONS_NPZ = REPORTS_DIR / "predictions.npz"

# --- explain, register -> report ------------------------------------------------------------
EXPLAIN_DIR = REPORTS_DIR / "explain"
REGISTRY_JSON = REPORTS_DIR / "registry.json"
REPORT_HTML = REPORTS_DIR / "report.html"
REPORT_MD = REPORTS_DIR / "report.md"


def split_path(folder: str | Path, split: str) -> Path:
    """Return the file of one processed split (``train``, ``val`` or ``test``) in ``folder``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return Path(folder) / f"{split}.npz"


def data_hash(arrays: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """Return a sha256 over every processed array: split, key, dtype, shape and bytes.

    Args:
        arrays: the arrays per split (``preprocess.make_splits``'s, or one split's).
    """
    digest = hashlib.sha256()
    for split in sorted(arrays):
        for key in sorted(arrays[split]):
            value = np.ascontiguousarray(arrays[split][key])
            digest.update(f"{split}/{key}:{value.dtype.str}:{value.shape}\n".encode())
            digest.update(value.data if value.size else b"")  # the bytes, without a copy
    return digest.hexdigest()


def read_split_arrays(
    path: str | Path, keys: tuple[str, ...] = ("x_raw", "y"), prefix: str | None = None
) -> dict[str, np.ndarray]:
    """Read arrays of one processed split, checked: ``x_raw`` is (n, d), ``y`` (n,), and a
    scaled copy ``x``, when asked for, has ``x_raw``'s shape. The one reader of these files.

    Args:
        path: a ``train.npz``, ``val.npz`` or ``test.npz`` written by the preprocess stage.
        keys: the arrays that must be there (``x_raw`` and ``y`` always are).
        prefix: also read every array whose name starts with this (explain's slice columns).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise NnopsError(f"{path}: missing array(s) {', '.join(missing)}")
            extra = [k for k in npz.files if prefix and k.startswith(prefix) and k not in keys]
            arrays = {k: npz[k] for k in (*keys, *extra)}
    except FileNotFoundError:
        raise NnopsError(f"{path}: file not found (did the preprocess stage run?)") from None
    except (OSError, ValueError, EOFError) as exc:
        raise NnopsError(f"{path}: cannot read as npz ({exc})") from None
    x, y = arrays.get("x_raw"), arrays.get("y")
    if x is not None and y is not None and (x.ndim != 2 or y.ndim != 1 or len(x) != len(y)):
        raise NnopsError(
            f"{path}: x_raw has shape {x.shape} and y {y.shape}; expected (n, d), (n,)"
        )
    if x is not None and "x" in arrays and arrays["x"].shape != x.shape:
        raise NnopsError(
            f"{path}: x has shape {arrays['x'].shape}, x_raw {x.shape}; expected equal"
        )
    return arrays


def read_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the raw features ``x_raw`` (float32) and labels ``y`` (int64) of one processed split.

    Args:
        path: a ``train.npz``, ``val.npz`` or ``test.npz`` written by the preprocess stage.
    """
    arrays = read_split_arrays(path)
    # copy=False: an array already float32 is not copied (MNIST scale: 190 MB saved)
    return arrays["x_raw"].astype(np.float32, copy=False), arrays["y"].astype(np.int64, copy=False)


def read_history(path: str | Path, missing_ok: bool = False) -> dict[str, list[float]] | None:
    """Read the train stage's per-epoch ``history.csv`` into float columns (an empty cell: NaN).

    Args:
        path: ``reports/train/history.csv``.
        missing_ok: return None for a missing file instead of failing.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise NnopsError(f"{path}: file not found (did the train stage run?)") from None
    columns: dict[str, list[float]] = {}
    for line, row in enumerate(rows, start=2):
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value) if value != "" else math.nan)
            except (TypeError, ValueError):
                raise NnopsError(
                    f"{path}:{line}: column {key!r} holds {value!r}, not a number"
                ) from None
    return columns


def write_predictions(
    path: str | Path, proba: np.ndarray, model_sha256: str, data_hash: str
) -> None:
    """Write the test split's class probabilities with the model and data they come from.

    Args:
        path: ``reports/predictions.npz``.
        proba: probabilities, shape (test rows, classes).
        model_sha256: :func:`nnops.io.file_sha256` of ``models/model.keras``.
        data_hash: ``data_hash`` of ``data/processed/meta.json``.
    """
    from nnops.io import atomic_path

    with atomic_path(Path(path)) as tmp, tmp.open("wb") as fh:
        np.savez(
            fh,
            proba=np.asarray(proba, dtype=np.float32),
            model_sha256=np.array(model_sha256),
            data_hash=np.array(data_hash),
        )


def read_predictions(
    path: str | Path, model_sha256: str, data_hash: str, rows: int
) -> np.ndarray | None:
    """Read the test probabilities evaluate wrote; None when the file is absent or was made
    from another model or processed data (the caller then scores the test split itself).

    Args:
        path: ``reports/predictions.npz``.
        model_sha256: :func:`nnops.io.file_sha256` of the model the caller uses.
        data_hash: ``data_hash`` of the processed data the caller uses.
        rows: the number of test rows.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            found: dict[str, Any] = {k: npz[k] for k in ("proba", "model_sha256", "data_hash")}
    except FileNotFoundError:
        return None
    except (KeyError, OSError, ValueError) as exc:
        raise NnopsError(f"{path}: cannot read ({exc}); rerun evaluate") from None
    if str(found["model_sha256"]) != model_sha256 or str(found["data_hash"]) != data_hash:
        return None
    proba = found["proba"]
    if proba.ndim != 2 or len(proba) != rows:
        raise NnopsError(f"{path}: proba has shape {proba.shape}; expected ({rows}, classes)")
    return proba


def load_model(path: str | Path) -> Any:
    """Load the trained Keras model for inference (TensorFlow imported here, quietly).

    Args:
        path: ``models/model.keras``.
    """
    from nnops.distribute import import_tensorflow

    import_tensorflow()
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (OSError, ValueError) as exc:
        raise NnopsError(f"{path}: cannot load the Keras model ({exc})") from None
