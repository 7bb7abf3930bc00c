"""How a CSV file is laid out: its compression, its field separator, its header (no BOM, no
duplicated names) and the words that mean a missing value. Shared by ingest, predict and
validate-batch, so the same file reads the same way in each.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import TextIO

from nnops.errors import NnopsError

log = logging.getLogger("nnops.csv")
_TOLD: set[str] = set()  # files whose separator was announced: once per file and process


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


# The first bytes of each compressed format pandas reads, and its name for it there.
MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"))


def compression(path: Path) -> str | None:
    """The compression of a file as its first bytes show it (``"gzip"``, ``"bz2"``, ``"xz"`` or
    ``"zip"``), whatever its name says; ``None`` for a plain file. A zip must hold one file.

    Args:
        path: the file.
    """
    with path.open("rb") as fh:
        head = fh.read(6)
    if head.startswith(b"PAR1"):
        raise NnopsError(f"{path}: a parquet file, not a CSV; write it out as CSV "
                         "(pandas: read_parquet(...).to_csv(..., index=False))")  # fmt: skip
    kind = next((name for magic, name in MAGIC if head.startswith(magic)), None)
    if kind == "zip":
        zip_member(path)
    return kind


def zip_member(path: Path) -> str:
    """The one file in a zip archive (macOS's ``__MACOSX/`` entries aside), else a clear error.

    Args:
        path: the zip archive.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist()
                     if not n.endswith("/") and not n.startswith("__MACOSX/")]  # fmt: skip
    except zipfile.BadZipFile as exc:
        raise NnopsError(f"{path}: a damaged zip archive ({exc})") from None
    if "xl/workbook.xml" in names:
        raise NnopsError(f"{path}: an Excel workbook, not a CSV; save the sheet as "
                         "\"CSV UTF-8\" and point data.path at that file")  # fmt: skip
    if len(names) != 1:
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise NnopsError(f"{path}: a zip archive must hold exactly one CSV file; it holds "
                         f"{len(names)}{': ' + listed if names else ''}")  # fmt: skip
    return names[0]


def open_text(path: Path, errors: str = "strict") -> TextIO:
    """Open a CSV file as text for reading, decompressing a gzip, bz2, xz or one-file zip
    archive, and dropping the byte-order mark a UTF-8 file may start with (Excel's).

    Args:
        path: the file.
        errors: how undecodable bytes are handled, as in ``open``.
    """
    kind = compression(path)
    text = {"newline": "", "encoding": "utf-8-sig", "errors": errors}
    if kind is None:
        return path.open(**text)
    if kind == "zip":
        import zipfile

        with zipfile.ZipFile(path) as archive:  # the open member keeps the file open
            member = archive.open(zip_member(path))
        return io.TextIOWrapper(member, **text)
    import bz2
    import gzip
    import lzma

    opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind]
    return opener(path, "rt", **text)


def not_utf8(path: Path, exc: UnicodeDecodeError) -> NnopsError:
    """The error for a file that is not UTF-8 text (Excel on Windows saves cp1252): where the
    first bad byte is (its line, for a plain file) and how to convert the file.

    Args:
        path: the file.
        exc: the decoding error.
    """
    where = f"byte {exc.object[exc.start : exc.start + 1]!r}"
    if compression(path) is None:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    where = f"byte {line[bad.start : bad.start + 1]!r} on line {number}"
                    break
    return NnopsError(f"{path}: not UTF-8 text ({where}); save it as UTF-8, e.g. "
                      f"`iconv -f cp1252 -t utf-8 {path.name} > utf8.csv`")  # fmt: skip


# What a damaged or cut-short compressed file raises while it is read.
DECOMPRESS_ERRORS = (EOFError, OSError)


def decompress_failure(path: Path, exc: BaseException) -> NnopsError:
    """The error to raise for ``exc`` (one of ``DECOMPRESS_ERRORS``) while reading ``path``: a
    damaged or cut-short archive is named as one; from a plain file, ``exc`` itself is raised.

    Args:
        path: the file being read.
        exc: what reading it raised.
    """
    if compression(path) is None:
        raise exc
    return NnopsError(f"{path}: cannot decompress it ({exc or type(exc).__name__}); the "
                      "archive is damaged or cut short")  # fmt: skip


def csv_columns(path: Path) -> tuple[list[str], str]:
    """The header's column names and the field separator (a comma, or the ``;``, tab or ``|``
    a comma-free header line implies), duplicated names refused.

    Args:
        path: the CSV file.
    """
    header = csv_header(path)
    sep = delimiter(header)
    if sep != ",":
        if str(path) not in _TOLD:
            _TOLD.add(str(path))
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
        with open_text(path) as fh:
            header = next(csv.reader(fh, delimiter=sep), None)
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except csv.Error as exc:
        raise NnopsError(f"{path}: cannot parse the header as CSV ({exc})") from None
    except DECOMPRESS_ERRORS as exc:
        raise decompress_failure(path, exc) from None
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


def read_table(path: Path, **options: object) -> object:
    """``pandas.read_csv`` of the file, decompressed as its first bytes say, any failure one
    line naming the file (empty, not UTF-8, unparsable, a damaged archive).

    Args:
        path: the CSV file.
        options: keyword arguments for ``pandas.read_csv``.
    """
    import pandas as pd

    try:
        return pd.read_csv(path, compression=compression(path), **options)
    except pd.errors.EmptyDataError:
        raise NnopsError(f"{path}: the file is empty") from None
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except pd.errors.ParserError as exc:
        raise NnopsError(f"{path}: cannot parse as CSV ({exc})") from None
    except DECOMPRESS_ERRORS as exc:
        raise decompress_failure(path, exc) from None
