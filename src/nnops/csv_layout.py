"""How a CSV file is laid out: its field separator, its header (no BOM, no duplicated names)
and the words that mean a missing value. Shared by ingest, predict and validate-batch, so the
same file reads the same way in each.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nnops.errors import NnopsError

log = logging.getLogger("nnops.ingest")


def delimiter(header: list[str]) -> str:
    """The field separator a one-field header line implies: ``;`` (spreadsheets in locales with
    a decimal comma), tab or ``|`` when exactly one of them separates its names; else a comma."""
    if len(header) != 1:
        return ","
    found = [sep for sep in (";", "\t", "|") if sep in header[0]]
    return found[0] if len(found) == 1 else ","


# The strings pandas reads as missing by default (its documented list).
NA_WORDS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
            "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan",
            "null"]  # fmt: skip


def csv_columns(path: Path) -> tuple[list[str], str]:
    """The header's column names and the field separator (a comma, or the ``;``, tab or ``|``
    a comma-free header line implies), duplicated names refused.

    Args:
        path: the CSV file.
    """
    header = csv_header(path)
    sep = delimiter(header)
    if sep != ",":
        log.info("%s: the header has no comma but %r between its names: reading it as %r-"
                 "separated", path, sep, sep)  # fmt: skip
        header = csv_header(path, sep)
    return header, sep


def csv_header(path: Path, sep: str = ",") -> list[str]:
    """Read the header line of a CSV, refusing duplicated column names (pandas would rename the
    second ``x`` to ``x.1`` without a word).

    Args:
        path: the CSV file.
        sep: the field separator.
    """
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # without a BOM (Excel's)
            header = next(csv.reader(fh, delimiter=sep), None)
    except UnicodeDecodeError as exc:
        raise NnopsError(f"{path}: cannot parse as CSV ({exc})") from None
    except csv.Error as exc:
        raise NnopsError(f"{path}: cannot parse the header as CSV ({exc})") from None
    if header is None:
        raise NnopsError(f"{path}: the file is empty")
    seen: set[str] = set()
    for i, name in enumerate(header):
        if name in seen:
            raise NnopsError(
                f"{path}: column {name!r} appears more than once in the header (again as column "
                f"{i + 1}); give each column its own name"
            )
        seen.add(name)
    return header
