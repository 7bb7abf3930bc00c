"""Reading the rows to predict: a CSV (in chunks, bounded memory) or an npz, checked against
the model's input width before any model is loaded."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnops.errors import NnopsError, few

log = logging.getLogger(__name__)


def check_rows(
    frame: Any,
    n_features: int | None,
    feature_names: Sequence[str] | None,
    source: str,
    first_row: int = 1,
) -> np.ndarray:
    """Turn a table of text cells into a float32 matrix, naming the column and row of a bad cell.

    When ``feature_names`` are known, those columns are taken in that order (extra columns such
    as ``label`` are ignored) and a missing one is refused (:func:`pick_columns`); otherwise
    every column is a feature, in the file's order.

    Args:
        frame: a pandas DataFrame of strings, as read from the input file.
        n_features: the number of features the model takes, if known.
        feature_names: the training feature names, if known.
        source: the input file name, for messages.
        first_row: the file's number for the frame's first row (frames come in chunks).
    """
    import pandas as pd

    columns = [str(c) for c in frame.columns]
    if feature_names:
        columns = pick_columns(columns, feature_names, source)
        frame = frame[columns]
    if n_features is not None and len(columns) != n_features:
        hint = f" (expected columns: {', '.join(feature_names[:5])}, ...)" if feature_names else ""
        raise NnopsError(
            f"{source}: {len(columns)} columns, but the model takes {n_features} features{hint}"
        )
    if len(frame) == 0:
        raise NnopsError(f"{source}: no rows to predict")
    out = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        cells = frame.iloc[:, j]
        values = pd.to_numeric(cells, errors="coerce")
        numbers = values.to_numpy(float)
        with np.errstate(invalid="ignore"):  # NaN compares False: counted by isna
            wide = np.abs(numbers) > np.finfo(np.float32).max  # inf once cast to float32
        bad = np.flatnonzero(values.isna().to_numpy() | ~np.isfinite(numbers) | wide)
        if len(bad):
            i = int(bad[0])
            raise NnopsError(
                f"{source}: column {name!r}, row {i + first_row}: {cells.iloc[i]!r} is not a "
                f"finite number within float32's range ({len(bad)} bad cell(s) in this column)"
            )
        out[:, j] = values.to_numpy(np.float32)
    return out


def pick_columns(header: Sequence[str], feature_names: Sequence[str], source: str) -> list[str]:
    """The model's feature columns, in the model's order, from a header that names them all.

    A header that lacks any of them is refused, naming what is missing and what the file has
    instead: scoring columns by position would give a wrong answer without a word.

    Args:
        header: the file's column names.
        feature_names: the columns the model takes, in order.
        source: the input file name, for messages.
    """
    present = set(header)
    missing = [name for name in feature_names if name not in present]
    if not missing:
        return list(feature_names)
    expected = set(feature_names)
    others = [name for name in header if name not in expected]
    instead = f"; it has {few(others, 6, quote=True)} instead" if others else ""
    raise NnopsError(
        f"{source}: the header lacks {len(missing)} of the model's {len(feature_names)} feature "
        f"columns: {few(missing, 6, quote=True)}{instead}. The model picks its columns by name "
        "(any order; extra columns are ignored): rename the columns, or score with a model of "
        "this data"
    )


def read_rows(
    path: str | Path,
    n_features: int | None,
    feature_names: Sequence[str] | None = None,
    key: str = "x_raw",
    header: bool = True,
) -> np.ndarray:
    """Read raw rows from a CSV (header optional) or an npz array.

    Args:
        path: the input file (``.csv`` or ``.npz``).
        n_features: the number of features the model takes, if known.
        feature_names: the training feature names, to pick columns by header.
        key: the array to read from an npz file.
        header: whether the CSV's first line names the columns.
    """
    from nnops.fetch import input_file
    from nnops.io import load_npz

    path = input_file(path, "CSV or npz file of rows to predict (--input)")
    if path.suffix == ".npz":
        x = load_npz(path, (key,), "an npz of rows to predict (--key)")[key]
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise NnopsError(
                f"{path}: {key!r} has shape {x.shape} and dtype {x.dtype}; "
                "expected a 2-D numeric array"
            )
        if n_features is not None and x.shape[1] != n_features:
            raise NnopsError(
                f"{path}: {key!r} has {x.shape[1]} columns, but the model takes {n_features}"
            )
        if not np.isfinite(x).all():
            i, j = np.argwhere(~np.isfinite(x))[0]
            raise NnopsError(f"{path}: {key!r} row {i + 1}, column {j + 1} is not finite")
        return x.astype(np.float32)
    return read_csv_rows(path, n_features, feature_names, header)


BOM = "\ufeff"
"""The byte-order mark Excel's "CSV UTF-8" and ``to_csv(encoding="utf-8-sig")`` put first."""


def strip_bom(name: str) -> str:
    """A header's first name without the byte-order mark a UTF-8 CSV may start with.

    Args:
        name: the first column name, as read with ``encoding="utf-8"``.
    """
    return name[len(BOM) :] if name.startswith(BOM) else name


CHUNK_CELLS = 1 << 18
"""Cells parsed per chunk: text cells cost ~50x their float32 size, so they never pile up."""


def read_csv_rows(
    path: Path, n_features: int | None, feature_names: Sequence[str] | None, header: bool
) -> np.ndarray:
    """Read a CSV of raw rows in chunks into one float32 matrix.

    The header alone decides the columns: duplicated names and a wrong column count are refused
    before a single row is read. Rows are parsed a chunk at a time, so memory stays near the
    size of the float32 result rather than of a table of text cells.

    Args:
        path: the CSV file.
        n_features: the number of features the model takes, if known.
        feature_names: the training feature names, to pick columns by header.
        header: whether the first line names the columns.
    """
    import csv

    import pandas as pd

    from nnops.csv_layout import (
        DECOMPRESS_ERRORS,
        compression,
        csv_columns,
        decompress_failure,
        delimiter,
        open_text,
    )

    if header:
        columns, sep = csv_columns(path)
        columns = [strip_bom(columns[0]), *columns[1:]] if columns else columns
    else:
        try:
            with open_text(path, errors="replace") as fh:
                first = next(csv.reader(fh), None)
        except DECOMPRESS_ERRORS as exc:
            raise decompress_failure(path, exc) from None
        if first is None:
            raise NnopsError(f"{path}: the file is empty")
        sep = delimiter(first)
        width = len(first) if sep == "," else len(first[0].split(sep))
        columns = [f"column_{i + 1}" for i in range(width)]
    picked = (
        pick_columns(columns, feature_names, str(path)) if header and feature_names else columns
    )
    if n_features is not None and len(picked) != n_features:
        hint = f" (expected columns: {', '.join(feature_names[:5])}, ...)" if feature_names else ""
        raise NnopsError(
            f"{path}: the header has {len(picked)} columns, but the model takes {n_features} "
            f"features{hint}"
        )
    chunks: list[np.ndarray] = []
    row = 1
    try:
        reader = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=None if header else columns,
            usecols=picked,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
            compression=compression(path),
            chunksize=max(1, CHUNK_CELLS // max(1, len(columns))),
        )
        with reader:
            for frame in reader:
                if len(frame):
                    chunks.append(check_rows(frame[picked], None, None, str(path), row))
                    row += len(frame)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, *DECOMPRESS_ERRORS) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NnopsError(f"{path}: not a readable CSV ({first_line})") from None
    if not chunks:
        raise NnopsError(f"{path}: no rows to predict")
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
