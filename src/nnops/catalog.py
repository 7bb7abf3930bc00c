"""The catalog of hand-over files: every file one stage writes and another reads.

dvc.yaml's ``cmd``, ``deps`` and ``outs`` name these paths; the stage scripts take them as their
argparse defaults and the library reads and writes them through the helpers here, so a file's
name and layout are written down once. Paths are relative to the project root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnops.errors import NnopsError

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


def read_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the raw features ``x_raw`` and labels ``y`` of one processed split.

    Args:
        path: a ``train.npz``, ``val.npz`` or ``test.npz`` written by the preprocess stage.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x_raw", "y") if k not in npz.files]
            if missing:
                raise NnopsError(f"{path}: missing array(s) {', '.join(missing)}")
            x, y = npz["x_raw"].astype(np.float32), npz["y"].astype(np.int64)
    except FileNotFoundError:
        raise NnopsError(f"{path}: file not found (did the preprocess stage run?)") from None
    if x.ndim != 2 or len(x) != len(y):
        raise NnopsError(
            f"{path}: x_raw has shape {x.shape} and y {y.shape}; expected (n, d), (n,)"
        )
    return x, y


def read_history(path: str | Path) -> dict[str, list[float]]:
    """Read the train stage's per-epoch ``history.csv`` into float columns.

    An empty cell (a metric missing in one epoch) reads as NaN; text is an error naming the file,
    the line and the column.

    Args:
        path: ``reports/train/history.csv``.
    """
    import csv
    import math

    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise NnopsError(f"{path}: file not found (did the train stage run?)") from None
    columns: dict[str, list[float]] = {}
    for line, row in enumerate(rows, start=2):
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value) if value != "" else math.nan)
            except (TypeError, ValueError):
                raise NnopsError(
                    f"{path}: non-numeric value {value!r} in column {key!r} (line {line})"
                ) from None
    return columns
