"""The raw hand-over file of the ingest stage: ``data/raw/data.parquet`` and ``meta.json``.

Ingest writes it; validate and preprocess read it, without importing the source readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nnops.catalog import RAW_META, RAW_TABLE
from nnops.errors import NnopsError
from nnops.io import atomic_path


@dataclass(frozen=True)
class RawData:
    """The raw table and its metadata, as written to ``data/raw``."""

    frame: pd.DataFrame
    meta: dict[str, Any]


def write_raw(raw: RawData, out: str | Path) -> None:
    """Write ``data.parquet`` and ``meta.json`` into ``out`` (each atomically).

    Args:
        raw: the raw table and metadata.
        out: the output directory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nnops.io import write_json

    out = Path(out)
    table = pa.Table.from_pandas(raw.frame, preserve_index=False)
    with atomic_path(out / RAW_TABLE) as tmp:
        # uncompressed, like the processed splits: half the write time of snappy on MNIST-sized
        # pixels (dictionary-encoded already, so the file is no larger); DVC's cache deduplicates
        pq.write_table(table, tmp, compression="none")
    write_json(out / RAW_META, raw.meta)


def read_raw(raw_dir: str | Path) -> RawData:
    """Read what :func:`write_raw` wrote, naming the missing file if there is one.

    Args:
        raw_dir: the ``data/raw`` directory.
    """
    import pyarrow.parquet as pq

    from nnops.io import read_json

    raw_dir = Path(raw_dir)
    meta = read_json(raw_dir / RAW_META)
    path = raw_dir / RAW_TABLE
    if not path.is_file():
        raise NnopsError(f"{path}: file not found (did the ingest stage run?)")
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise NnopsError(f"{path}: cannot read as parquet ({exc})") from None
    return RawData(frame=frame, meta=meta)
