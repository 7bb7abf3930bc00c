"""Check a new CSV or npz batch against the training profile the validate stage wrote.

``nnops validate-batch --reference reports/validation/profile.json rows.csv``

The checks follow the validate stage's: schema (feature columns present, nothing unknown; for npz
the number of columns), numeric cells, no missing or infinite values (a value beyond float32's
range counts as infinite), the value bounds, known labels when the batch has them, and drift
against the training partition with the same statistics and thresholds
(:func:`nnops.drift.drift_table`), measured against the profile's quantile sketch. The checks
are plain numpy so a 10,000-row batch is judged in about a second.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnops import drift
from nnops.catalog import PROFILE_JSON, VALIDATION_DIR
from nnops.data_profile import PROFILE_FORMAT, not_float32
from nnops.errors import NnopsError
from nnops.io import load_npz, plain, read_json
from nnops.validation_report import failure_lines, infinite_detail, range_detail, render_html

log = logging.getLogger(__name__)

DEFAULT_REFERENCE = str(VALIDATION_DIR / PROFILE_JSON)
SCHEMA_CHECKS = ("schema_columns", "schema_shape")


@dataclass(frozen=True)
class Batch:
    """A batch as read from its file: the table (cells as read) and where it came from."""

    frame: pd.DataFrame
    path: str
    kind: str  # "csv" or "npz"


def load_profile(path: str | Path) -> dict[str, Any]:
    """Read a ``profile.json`` written by the validate stage, naming the file when it is wrong.

    Args:
        path: the profile file.
    """
    profile = read_json(path)
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise NnopsError(f"{path}: not an nnops training profile (expected {PROFILE_FORMAT})")
    return profile


def read_batch(
    path: str | Path, profile: dict[str, Any], key: str = "x_raw", header: bool = True
) -> Batch:
    """Read a CSV (cells kept as text) or an npz array (images flattened) into a table.

    Args:
        path: the batch file.
        profile: the training profile (names the columns of an npz array).
        key: the array to read from an npz file.
        header: whether the CSV's first line names the columns.
    """
    path = Path(path)
    if not path.is_file():
        raise NnopsError(f"{path}: batch file not found")
    if path.suffix == ".npz":
        x = load_npz(path, (key,), "an npz batch (--key)")[key]
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
            raise NnopsError(
                f"{path}: {key!r} has shape {x.shape} and dtype {x.dtype}; "
                "expected numeric rows (2-D, or images)"
            )
        x = x.reshape(len(x), -1)
        names = profile["feature_names"]
        columns = (
            names if x.shape[1] == len(names) else [f"column_{i + 1}" for i in range(x.shape[1])]
        )
        return Batch(pd.DataFrame(x, columns=columns, copy=False), str(path), "npz")
    from nnops.csv_layout import DECOMPRESS_ERRORS, compression

    sep = _separator(path, header)
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str,
                            keep_default_na=False, compression=compression(path))  # fmt: skip
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            *DECOMPRESS_ERRORS) as exc:  # fmt: skip
        raise NnopsError(f"{path}: not a readable CSV ({exc})") from None
    if not header:
        names = profile["feature_names"]
        frame.columns = (
            names
            if frame.shape[1] == len(names)
            else [f"column_{i + 1}" for i in range(frame.shape[1])]
        )
    return Batch(frame, str(path), "csv")


def _separator(path: Path, header: bool) -> str:
    """The CSV's field separator, found as ingest and predict find it: a comma, or the ``;``,
    tab or ``|`` a comma-free first line implies (a header's duplicated names are refused).

    Args:
        path: the CSV file.
        header: whether the first line names the columns.
    """
    import csv

    from nnops.csv_layout import DECOMPRESS_ERRORS, csv_columns, delimiter, open_text

    if header:
        return csv_columns(path)[1]
    try:
        with open_text(path) as fh:
            first = next(csv.reader(fh), None)
    except (UnicodeDecodeError, csv.Error, *DECOMPRESS_ERRORS) as exc:
        raise NnopsError(f"{path}: not a readable CSV ({exc})") from None
    return delimiter(first) if first else ","


def unknown_columns(batch: Batch, profile: dict[str, Any]) -> list[str]:
    """The batch's columns that are no training feature, label or ``data.exclude_columns`` one.

    Args:
        batch: the batch.
        profile: the training profile.
    """
    allowed = {*profile["feature_names"], profile.get("label_column") or "label",
               *profile.get("exclude_columns", [])}  # fmt: skip
    return [c for c in map(str, batch.frame.columns) if c not in allowed]


def schema_problems(batch: Batch, profile: dict[str, Any]) -> list[str]:
    """What keeps the batch from having the training schema (empty when it matches).

    Args:
        batch: the batch.
        profile: the training profile.
    """
    names = list(profile["feature_names"])
    columns = [str(c) for c in batch.frame.columns]
    if batch.kind == "npz":
        if len(columns) != len(names):
            return [f"{len(columns)} columns per row, but the training data has {len(names)}"]
        return []
    missing = [c for c in names if c not in columns]
    unexpected = unknown_columns(batch, profile)
    problems = []
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        problems.append(f"missing column(s) {', '.join(missing[:5])}{more}")
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        problems.append(f"unknown column(s) {', '.join(unexpected[:5])}{more}")
    return problems


def _entry(name: str, ok: bool, describe: str, column: Any, observed: Any, bound: Any, **more: Any):
    return {
        "name": name,
        "expectation": "nnops batch check",
        "description": describe,
        "column": column,
        "observed": observed,
        "bound": bound,
        "success": bool(ok),
        **more,
    }


def check_batch(
    batch: Batch, profile: dict[str, Any], reference: str = "", schema_only: bool = False
) -> dict[str, Any]:
    """Check a batch against the training profile; return the report (same shape as validate's).

    Args:
        batch: the batch from :func:`read_batch`.
        profile: the training profile from :func:`load_profile`.
        reference: the profile's path, for the report.
        schema_only: stop after the schema check (``nnops predict`` uses the rest as warnings).
    """
    from nnops.config import ValidateParams

    params = ValidateParams(**profile["validate"])
    names = list(profile["feature_names"])
    problems = schema_problems(batch, profile)
    entries = [
        _entry(
            "schema_columns",
            not problems,
            "the batch has the training feature columns",
            "; ".join(problems) or None,
            f"{batch.frame.shape[1]} columns",
            f"{len(names)} features from the profile",
        )
    ]
    report: dict[str, Any] = {
        "batch": batch.path,
        "reference": reference,
        "source": profile.get("source"),
        "n_rows": len(batch.frame),
        "n_features": len(names),
        "expectations": entries,
    }
    if problems or schema_only:
        return _finish(report)
    frame = batch.frame
    entries.append(
        _entry("min_rows", len(frame) > 0, "the batch has rows", None, len(frame), ">= 1")
    )
    values = frame[names]
    if batch.kind == "csv":
        text = values.to_numpy(dtype=object)
        blank = (text == "") | pd.isna(text)
        numbers = values.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        bad = np.isnan(numbers) & ~blank
        cols = [names[j] for j in np.flatnonzero(bad.any(axis=0))]
        entries.append(
            _entry("schema_feature_dtypes", not cols, "every feature cell is a number",
                   ", ".join(cols[:5]) or None, f"{int(bad.sum())} non-numeric cell(s)", "numeric")
        )  # fmt: skip
        missing = blank
    else:
        numbers = values.to_numpy()
        missing = np.isnan(numbers) if numbers.dtype.kind == "f" else np.zeros(numbers.shape, bool)
    cols = [names[j] for j in np.flatnonzero(missing.any(axis=0))]
    entries.append(
        _entry("no_missing_features", not cols, "no feature value is missing",
               ", ".join(cols[:5]) or None, int(missing.sum()), 0)
    )  # fmt: skip
    infinite = not_float32(numbers) if numbers.dtype.kind == "f" else np.zeros(numbers.shape, bool)
    cols = [names[j] for j in np.flatnonzero(infinite.any(axis=0))]
    entries.append(
        _entry("no_infinite_features", not cols,
               "no feature value is infinite, or beyond float32's range",
               ", ".join(cols[:5]) or None, int(infinite.sum()), 0,
               **({"detail": infinite_detail(values, cols)} if cols else {}))
    )  # fmt: skip
    low, high = profile["value_bounds"]
    for name, bound, side in (("value_min", low, "below"), ("value_max", high, "above")):
        if bound is None:
            continue
        with np.errstate(invalid="ignore"):
            out = (numbers < bound) if side == "below" else (numbers > bound)
        cols = [names[j] for j in np.flatnonzero(out.any(axis=0))]
        detail = range_detail(values, cols, low, high) if cols else None
        entries.append(
            _entry(name, not cols, f"no feature value {side} the training bound",
                   ", ".join(cols[:5]) or None, int(out.sum()),
                   f"{'>=' if side == 'below' else '<='} {bound:g}",
                   **({"detail": detail} if detail else {}))
        )  # fmt: skip
    label = profile.get("label_column") or "label"
    if label in frame.columns:
        unknown = unseen_labels(frame[label], profile["class_names"])
        shown = ", ".join(map(repr, unknown[:5]))
        observed = f"[{shown}, ...] ({len(unknown)} unseen labels)" if len(unknown) > 5 else None
        entries.append(
            _entry("label_set", not unknown, "labels are known classes", label,
                   observed or unknown or "all known",
                   f"{len(profile['class_names'])} training classes")
        )  # fmt: skip
    drift = batch_drift(numbers, profile, params)
    report["drift"] = drift
    drifted = [f for f in drift["features"] if f["drift"] == 1]
    entries.append(
        _entry(
            "drift",
            not drift["drifted"],
            "share of features whose batch values differ from the training partition",
            ", ".join(f["feature"] for f in drifted[:5]) or None,
            {"method": drift["method"], "drifted": drift["n_drifted"],
             "tested": drift["n_tested"], "share": round(drift["drifted_share"], 4)},
            f"share <= {params.drift_share:g}",
            **({"failing_columns": [
                {"column": f["feature"], "observed": f["drift_statistic"],
                 "reason": f["drift_reason"]} for f in drifted[:20]],
                "n_failing": len(drifted)} if drifted else {}),
        )
    )  # fmt: skip
    return _finish(report)


def unseen_labels(cells: pd.Series, class_names: list[str]) -> list[str]:
    """The batch's label cells (as read, sorted) that name no training class.

    The cells are read as ingest reads the training labels: typed by pandas' CSV parser as one
    column (``1.0`` is a number in a column of numbers), then named by
    :func:`nnops.ingest.label_names` (``1.0`` -> ``'1'``, ``'Adelie '`` -> ``'Adelie'``). A cell
    also names a class by its own stripped text, so that a batch holding only the number-like
    classes of a text column (``'07'`` beside ``'x'`` in training) is not read as numbers. A
    class's index ``0..k-1`` is known too; a blank cell never is.

    Args:
        cells: the batch's label column, cells as read.
        class_names: the training classes from the profile.
    """
    import csv
    import io

    from nnops.ingest import label_names

    known = {str(c) for c in class_names} | {str(i) for i in range(len(class_names))}
    distinct = pd.Series(pd.unique(cells.astype(str).to_numpy()), dtype=object)
    own = label_names(distinct)
    blank = (own == "").to_numpy()
    ok = np.zeros(len(distinct), dtype=bool)
    if not blank.all():
        # the cells as a one-column CSV (every field quoted, so none is split or lost), read back
        # with ingest's option for the label column: no word but an empty cell is missing
        text = distinct[~blank].to_csv(index=False, header=False, quoting=csv.QUOTE_ALL)
        typed = pd.read_csv(io.StringIO(text), header=None, keep_default_na=False)[0]
        ok[~blank] = label_names(typed).isin(known).to_numpy() | own[~blank].isin(known).to_numpy()
    return sorted(distinct[~ok])


def batch_drift(numbers: np.ndarray, profile: dict[str, Any], params: Any) -> dict[str, Any]:
    """Drift of a batch (rows x features) against the profile's training sketches.

    Args:
        numbers: the batch's feature values, shape (rows, features); NaN cells are left out.
        profile: the training profile.
        params: the ``validate`` params recorded in the profile.
    """
    names = list(profile["feature_names"])
    feats = profile["features"]
    sketches = [feats[n]["sketch"] for n in names]
    widths = {len(s) for s in sketches}
    numbers = np.asarray(numbers)
    if (
        len(widths) == 1
        and np.issubdtype(numbers.dtype, np.integer)
        and all(isinstance(v, int) for s in sketches for v in s[:1] + s[-1:])
    ):
        # integer pixels: counted with bincount, as the stage does
        sketch = np.array(sketches, dtype=np.int64)
        batch = np.ascontiguousarray(numbers.T)
    else:
        sketch = np.full((len(names), max(widths, default=0)), np.nan)
        for j, s in enumerate(sketches):
            sketch[j, : len(s)] = s
        batch = np.ascontiguousarray(numbers.T, dtype=np.float64)
    cmp = drift.compare_samples(sketch, batch)
    n_ref = int(profile["n_reference"])
    cmp = drift.Comparison(
        ks=cmp.ks,
        wasserstein=cmp.wasserstein,
        n_first=np.array([feats[n]["n"] for n in names], dtype=np.int64),
        n_second=cmp.n_second,
        mean_first=np.array([feats[n]["mean"] for n in names], dtype=np.float64),
        std_first=np.array([np.nan if feats[n]["std"] is None else feats[n]["std"] for n in names]),
        std_second=cmp.std_second,
        sketch=[],
    )
    table = drift.drift_table(names, cmp, n_ref, params)
    return drift.drift_summary(table, params, n_ref, len(numbers))


def _finish(report: dict[str, Any]) -> dict[str, Any]:
    entries = report["expectations"]
    report.update(
        success=all(e["success"] for e in entries),
        n_expectations=len(entries),
        n_failed=sum(not e["success"] for e in entries),
    )
    return plain(report)


def parser(prog: str = "nnops validate-batch") -> argparse.ArgumentParser:
    """The command-line parser of ``nnops validate-batch``.

    Args:
        prog: the program name shown in usage and error lines.
    """
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("batch", help="the CSV or npz batch to check")
    p.add_argument(
        "--reference",
        default=DEFAULT_REFERENCE,
        help="the training profile written by the validate stage (default: %(default)s)",
    )
    p.add_argument("--report", help="the HTML report to write (default: BATCH.validation.html)")
    p.add_argument("--key", default="x_raw", help="array name inside an npz (default: x_raw)")
    p.add_argument("--no-header", action="store_true", help="the CSV has no header line")
    return p


def main(argv: list[str] | None = None, prog: str = "nnops validate-batch") -> int:
    """Run ``nnops validate-batch``: 0 when the batch is clean, 2 when a check fails.

    Args:
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
        prog: the program name used in messages.
    """
    from nnops.io import write_text
    from nnops.stage import start_command

    args = start_command(parser(prog), argv)
    try:
        profile = load_profile(args.reference)
        batch = read_batch(args.batch, profile, args.key, header=not args.no_header)
        report = check_batch(batch, profile, reference=args.reference)
    except NnopsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.report or f"{args.batch}.validation.html")
    try:
        write_text(out, render_html(report, title="Batch validation"))
        unwritten = None
    except OSError as exc:  # a read-only folder, a full disk: the verdict still stands
        unwritten = (
            f"{out}: cannot write the report ({exc.strerror or exc}); "
            "write it elsewhere with --report PATH"
        )
    for line in failure_lines(report):
        print(f"{prog}: {line}", file=sys.stderr)
    verdict = "passed" if report["success"] else "FAILED"
    print(
        f"{prog}: {args.batch}: {verdict} ({report['n_failed']} of {report['n_expectations']} "
        f"checks failed, {report['n_rows']} rows); "
        + (f"report {out}" if unwritten is None else "no report written")
    )
    if unwritten is not None:
        print(f"{prog}: error: {unwritten}", file=sys.stderr)
        return 2
    return 0 if report["success"] else 2
