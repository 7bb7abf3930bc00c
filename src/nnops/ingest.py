"""Bring a data source into one raw table: features, an integer ``label`` and an ``origin``.

Each source becomes a :class:`RawData`: a pandas frame (feature columns, ``label``, ``origin``
= ``"train"``/``"test"``, any excluded slice columns) and a metadata dict. Reading a source
touches files or the network; turning arrays or a CSV table into a :class:`RawData` is pure.
scikit-learn and Keras are imported only by the sources that need them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnops.config import DataParams
from nnops.csv_layout import NA_WORDS, csv_columns, read_table
from nnops.errors import NnopsError
from nnops.fetch import input_file, source_file
from nnops.io import load_npz
from nnops.raw import RawData

log = logging.getLogger(__name__)

LABEL = "label"
ORIGIN = "origin"
RESERVED = (LABEL, ORIGIN)
HASH_ROWS = 8192  # rows hashed at once by content_hash (bounds its memory)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# The value range each built-in pixel source is known to use.
PIXEL_RANGES: dict[str, tuple[float, float]] = {
    "digits": (0.0, 16.0),
    "mnist": (0.0, 255.0),
    "fashion_mnist": (0.0, 255.0),
}


# ---------------------------------------------------------------- pure constructors


def encode_labels(labels: pd.Series, column: str) -> tuple[np.ndarray, list[str]]:
    """Map class labels (integers or strings) to class indices ``0..k-1``.

    Classes are ordered by value (numerically for numbers), so labels that already are
    ``0..k-1`` keep their values.

    Args:
        labels: the label values.
        column: the column name, for messages.
    """
    missing = labels.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        cut = (
            "; only the last row lacks it: was the file cut short (a partial download or copy)?"
            if missing.sum() == 1 and first == len(missing) - 1
            else ""
        )
        raise NnopsError(
            f"label column {column!r} has {int(missing.sum())} empty value(s) "
            f"(first in row {first + 1} after the header){cut}"
        )
    if pd.api.types.is_bool_dtype(labels):  # False, True: indices 0, 1 under their own names
        classes, codes = np.unique(labels.to_numpy(dtype=bool), return_inverse=True)
        return codes.astype(np.int64), list(label_names(pd.Series(classes)))
    if pd.api.types.is_numeric_dtype(labels):
        values = labels.to_numpy()
        if not np.all(np.isfinite(values)) or not np.all(np.mod(values, 1) == 0):
            bad = values[~(np.isfinite(values) & (np.mod(values, 1) == 0))][0].item()
            raise NnopsError(
                f"label column {column!r} holds {bad!r}; class labels must be integers or strings"
            )
        classes, codes = np.unique(values.astype(np.int64), return_inverse=True)
    else:
        classes, codes = np.unique(_label_text(labels, column), return_inverse=True)
    return codes.astype(np.int64), list(label_names(pd.Series(classes)))


def label_names(labels: pd.Series) -> pd.Series:
    """Each label as the class name ingest gives it: ``1.0`` -> ``'1'``, ``True`` -> ``'True'``,
    ``'Adelie '`` -> ``'Adelie'``; a number that is not whole keeps its text (it names no class).

    The training classes (:func:`encode_labels`) and a batch's labels (``nnops validate-batch``)
    are named by this one function, so the two cannot drift apart.

    Args:
        labels: label values as pandas reads them from a CSV, none missing.
    """
    if pd.api.types.is_bool_dtype(labels) or not pd.api.types.is_numeric_dtype(labels):
        return labels.astype(str).str.strip()
    values = labels.to_numpy()
    with np.errstate(invalid="ignore"):  # inf and nan are not whole
        whole = np.isfinite(values) & (np.mod(values, 1) == 0)
    names = labels.astype(str).to_numpy(dtype=object)
    names[whole] = values[whole].astype(np.int64).astype(str)
    return pd.Series(names, index=labels.index, dtype=object)


def _label_text(labels: pd.Series, column: str) -> np.ndarray:
    """String labels with surrounding spaces stripped; refuse one class spelt in two cases.

    ``'setosa '`` and ``'setosa'`` are one class (the space is stripped, with a warning), while
    ``'SETOSA'`` next to ``'setosa'`` stops ingest: it is most likely one class spelt two ways,
    which would train as two.
    """
    raw = labels.astype(str)
    text = label_names(labels)
    changed = int((text != raw).sum())
    if changed:
        first = int(np.flatnonzero((text != raw).to_numpy())[0])
        log.warning("label column %r: stripped the spaces around %d label(s), e.g. %r -> %r",
                    column, changed, raw.iloc[first], text.iloc[first])  # fmt: skip
    empty = (text == "").to_numpy()
    if empty.any():
        raise NnopsError(
            f"label column {column!r} has {int(empty.sum())} blank value(s) "
            f"(first in row {int(np.flatnonzero(empty)[0]) + 1} after the header)"
        )
    counts = text.value_counts()
    folded: dict[str, list[str]] = {}
    for name in counts.index:
        folded.setdefault(name.casefold(), []).append(name)
    clashes = [names for names in folded.values() if len(names) > 1]
    if clashes:
        shown = " and ".join(f"{n!r} ({int(counts[n])} rows)" for n in clashes[0])
        more = f"; {len(clashes) - 1} more such group(s)" if len(clashes) > 1 else ""
        raise NnopsError(
            f"label column {column!r}: {shown} differ only in letter case{more}. One class "
            "spelt two ways would train as two classes: spell it one way in the file"
        )
    return text.to_numpy()


def content_hash(frame: pd.DataFrame) -> str:
    """Return a sha256 over the column names, dtypes and values of ``frame``.

    Args:
        frame: the raw table.
    """
    digest = hashlib.sha256()
    for dtype, columns in frame.columns.groupby(frame.dtypes.astype(str)).items():
        digest.update(f"{dtype}:{','.join(map(str, columns))}\n".encode())
        if pd.api.types.is_numeric_dtype(frame[columns[0]].dtype):
            # row-major bytes, a chunk of rows at a time (sha256 streams: the same digest as one
            # update over the whole block, without a copy of it)
            for start in range(0, len(frame), HASH_ROWS):
                rows = frame.iloc[start : start + HASH_ROWS][list(columns)]
                digest.update(np.ascontiguousarray(rows.to_numpy()).data)
        else:
            block = frame[list(columns)]
            for column in columns:
                text = block[column].astype("string").fillna("\x01<missing>")
                digest.update("\0".join(text).encode())
    return digest.hexdigest()


def _meta(
    source: str,
    frame: pd.DataFrame,
    features: Sequence[str],
    class_names: Sequence[str],
    image_shape: Sequence[int] | None,
    has_test_split: bool,
    value_range: tuple[float, float] | None,
    exclude_columns: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "source": source,
        "n_rows": len(frame),
        "n_features": len(features),
        "feature_names": list(features),
        "class_names": list(class_names),
        "label_mapping": {name: i for i, name in enumerate(class_names)},
        "image_shape": list(image_shape) if image_shape else None,
        "has_test_split": has_test_split,
        "value_range": list(value_range) if value_range else None,
        "exclude_columns": list(exclude_columns),
        "content_hash": content_hash(frame),
    }


def from_arrays(
    source: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
) -> RawData:
    """Build the raw table from image (or flat) arrays; pixels become ``px_0..px_{d-1}``.

    Args:
        source: the source name recorded in the metadata.
        x_train: training inputs, shape (n, ...) .
        y_train: training labels, shape (n,).
        x_test: the source's own test inputs, if it has a test split.
        y_test: the matching test labels.
        class_names: names for class indices; derived from the labels when omitted.
        value_range: the known (min, max) of the pixel values, when there is one.
    """
    parts = [("train", x_train, y_train)]
    if x_test is not None and y_test is not None:
        parts.append(("test", x_test, y_test))
    for origin, x, y in parts:
        if len(x) != len(y):
            raise NnopsError(f"{source}: x_{origin} has {len(x)} rows but y_{origin} has {len(y)}")
        if np.ndim(y) != 1:
            raise NnopsError(f"{source}: y_{origin} must be one-dimensional, has shape {y.shape}")
        if x.ndim < 2:
            raise NnopsError(f"{source}: x_{origin} must have a feature axis, has shape {x.shape}")
    shape = x_train.shape[1:]
    if len(parts) == 2 and x_test.shape[1:] != shape:
        raise NnopsError(
            f"{source}: x_test rows have shape {x_test.shape[1:]} but x_train rows {shape}"
        )
    x = np.concatenate([p[1].reshape(len(p[1]), -1) for p in parts])
    labels = pd.Series(np.concatenate([np.asarray(p[2]) for p in parts]))
    codes, names = encode_labels(labels, "y")
    if class_names is not None:
        if len(class_names) < len(names) or int(labels.max()) >= len(class_names):
            raise NnopsError(f"{source}: labels exceed the {len(class_names)} known classes")
        codes, names = labels.to_numpy().astype(np.int64), list(class_names)
    features = [f"px_{i}" for i in range(x.shape[1])]
    frame = pd.DataFrame(x, columns=features, copy=False)  # x is ours: no second copy
    frame[LABEL] = codes
    frame[ORIGIN] = np.repeat([p[0] for p in parts], [len(p[1]) for p in parts])
    image_shape = list(shape) if len(shape) >= 2 else None
    meta = _meta(source, frame, features, names, image_shape, len(parts) == 2, value_range)
    return RawData(frame=frame, meta=meta)


def _numeric_feature(values: pd.Series, column: str, where: str) -> pd.Series:
    """Return ``values`` as numbers, or fail naming the column and a value that is not one."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.uint8)
    if pd.api.types.is_numeric_dtype(values):
        return values
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna().to_numpy() & values.notna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NnopsError(
            f"{where}: feature column {column!r} is not numeric: row {row + 1} after the header "
            f"holds {values.iloc[row]!r} ({int(bad.sum())} such value(s)); list text columns in "
            "data.exclude_columns or fix the file"
        )
    return converted


def from_table(
    table: pd.DataFrame,
    label_column: str,
    exclude_columns: Sequence[str] = (),
    source: str = "csv",
    where: str = "csv",
) -> RawData:
    """Build the raw table from a user's table: numeric features, a label, slice columns.

    Args:
        table: the table as read, one row per example.
        label_column: the column that holds the class label.
        exclude_columns: columns kept for slicing, not used as features.
        source: the source name recorded in the metadata.
        where: the file name, for messages.
    """
    columns = [str(c) for c in table.columns]
    table = table.set_axis(columns, axis=1)
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise NnopsError(f"{where}: duplicate column names {dupes}")
    if label_column not in columns:
        raise NnopsError(
            f"{where}: label column {label_column!r} (data.label_column) not found; "
            f"columns are {columns[:20]}"
        )
    missing = [c for c in exclude_columns if c not in columns]
    if missing:
        raise NnopsError(
            f"{where}: data.exclude_columns names {missing} which are not columns of the file; "
            f"columns are {columns[:20]}"
        )
    if label_column in exclude_columns:
        raise NnopsError(f"{where}: data.exclude_columns must not hold the label {label_column!r}")
    features = [c for c in columns if c != label_column and c not in exclude_columns]
    clash = [c for c in (*features, *exclude_columns) if c in RESERVED]
    if clash:
        raise NnopsError(
            f"{where}: column(s) {clash} clash with the names nnops reserves for the label and "
            "origin; rename them or make one the data.label_column"
        )
    if not features:
        raise NnopsError(f"{where}: no feature columns left after the label and exclusions")
    if table.empty:
        raise NnopsError(f"{where}: the file has a header but no rows")
    frame = pd.DataFrame({c: _numeric_feature(table[c], c, where) for c in features})
    try:
        codes, names = encode_labels(table[label_column], label_column)
    except NnopsError as exc:
        raise NnopsError(f"{where}: {exc}") from None
    if len(names) < 2:
        raise NnopsError(f"{where}: label column {label_column!r} holds one class only "
                         f"({names[0]!r}); a classifier needs at least two")  # fmt: skip
    frame[LABEL] = codes
    frame[ORIGIN] = "train"
    for column in exclude_columns:
        frame[column] = table[column].to_numpy()
    meta = _meta(source, frame, features, names, None, False, None, exclude_columns)
    meta["label_column"] = label_column
    return RawData(frame=frame, meta=meta)


# ---------------------------------------------------------------- readers (files, keras)


def read_npz(path: str | Path, source: str = "npz") -> RawData:
    """Read a file in the keras MNIST layout (``x_train, y_train, x_test, y_test``).

    Args:
        path: the ``.npz`` file.
        source: the source name recorded in the metadata.
    """
    path = input_file(path, "an npz file (data.path)")
    arrays = load_npz(path, NPZ_KEYS, "an npz source (data.path)")
    x = arrays["x_train"]
    value_range = None
    if np.issubdtype(x.dtype, np.integer) and x.size and x.min() >= 0 and x.max() <= 255:
        value_range = (0.0, 255.0)
    return from_arrays(source, value_range=value_range, **arrays)


def read_csv(path: str | Path, label_column: str, exclude_columns: Sequence[str] = ()) -> RawData:
    """Read a user's CSV: numeric feature columns, a label column and optional slice columns.

    Args:
        path: the CSV file.
        label_column: the column that holds the class label.
        exclude_columns: columns kept for slicing, not used as features.
    """
    path = input_file(path, "a csv file (data.path)")
    header, sep = csv_columns(path)
    # pandas' usual missing-value words for the features; a label is missing only when its cell
    # is empty, so that classes named "None", "NA" or "null" stay classes.
    na = {name: NA_WORDS for name in header if name != label_column} | {label_column: [""]}
    table = read_table(path, low_memory=False, sep=sep, keep_default_na=False, na_values=na)
    return from_table(table, label_column, exclude_columns, where=str(path))


def load_digits() -> RawData:
    """Read scikit-learn's bundled 8x8 digits (offline; no test split of its own)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = bunch.images.astype(np.uint8)
    names = [str(int(t)) for t in bunch.target_names]
    return from_arrays("digits", images, bunch.target, class_names=names, value_range=(0, 16))


def load_keras(name: str, cache_dir: str | Path) -> RawData:
    """Download (once) MNIST or Fashion-MNIST through ``keras.datasets``.

    Keras caches under ``$KERAS_HOME``; it is pointed at ``cache_dir/keras`` before Keras is
    imported, unless the user has set it.

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        cache_dir: the download cache directory.
    """
    os.environ.setdefault("KERAS_HOME", str((Path(cache_dir) / "keras").resolve()))
    from keras import datasets

    loader = {"mnist": datasets.mnist, "fashion_mnist": datasets.fashion_mnist}[name]
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as exc:  # keras raises plain Exception on download failures
        raise NnopsError(f"data.source={name}: keras.datasets download failed ({exc})") from None
    names = list(FASHION_CLASSES) if name == "fashion_mnist" else [str(i) for i in range(10)]
    return from_arrays(name, x_train, y_train, x_test, y_test, names, PIXEL_RANGES[name])


def load(params: DataParams) -> RawData:
    """Read the source ``params.source`` names.

    Args:
        params: the ``data`` params section.
    """
    if params.source != "csv" and params.exclude_columns:
        raise NnopsError(
            f"data.exclude_columns={list(params.exclude_columns)} applies only to "
            f"data.source=csv; received data.source={params.source!r}"
        )
    if params.source == "digits":
        return load_digits()
    if params.source in ("mnist", "fashion_mnist"):
        return load_keras(params.source, params.cache_dir)
    path = source_file(params)
    if params.source == "npz":
        return read_npz(path)
    return read_csv(path, params.label_column, params.exclude_columns)


def log_summary(raw: RawData, out: str | Path) -> None:
    """Log one line saying what was ingested and where it went.

    Args:
        raw: the raw table and metadata.
        out: the output directory.
    """
    meta = raw.meta
    log.info(
        "%s: %d rows, %d features, %d classes, own test split: %s -> %s",
        meta["source"],
        meta["n_rows"],
        meta["n_features"],
        len(meta["class_names"]),
        meta["has_test_split"],
        out,
    )
