"""The validation report: GX results turned into ``validation.json``, error lines and HTML.

:func:`summarize` names, for each expectation, the offending column, what was observed and the
bound; :func:`render_html` draws the same report (the stage's or a batch's) from the
``validation.html.j2`` template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from nnops.data_profile import FLOAT32_MAX, ORIGINS, Profile, not_float32
from nnops.expectations import Check
from nnops.io import plain

DRIFT_ROWS_SHOWN = 30  # drifted features, then the closest calls, in the HTML drift table


def _raised(res: Any) -> bool:
    """Whether GX could not evaluate the expectation (for example a missing column)."""
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return True
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _per_item(prof: Profile, check: Check, result: dict[str, Any]) -> dict[str, Any]:
    """Column and observed value of a per-feature or per-class check.

    A failing check names its most extreme failing feature (or class), as GX reported it; a
    passing one names the most extreme feature, so the report shows how close it came.
    """
    key = "feature" if check.table == "features" else "class_name"
    failing = [
        {"column": str(item[key]), "observed": item[check.column]}
        for item in result.get("unexpected_index_list") or []
    ]
    table = getattr(prof, check.table)
    lowest = check.column == "min"
    if check.table == "classes":
        fractions = table.set_index("class_name")["fraction"]
        worst = failing[0] if failing else None
        observed = {"min": fractions.min(), "max": fractions.max()}
        if worst:
            observed = {f"class {worst['column']}": worst["observed"]}
        return {"column": "label", "observed": observed, "failing": failing}
    if check.column == "dtype":
        worst = failing[0] if failing else {"column": None, "observed": "all numeric"}
    elif failing:
        pick = min if lowest else max
        worst = pick(failing, key=lambda f: f["observed"])
    elif table[check.column].notna().any():
        i = table[check.column].idxmin() if lowest else table[check.column].idxmax()
        worst = {"column": table.at[i, key], "observed": table.at[i, check.column]}
    else:
        worst = {"column": None, "observed": None}
    return {"column": worst["column"], "observed": worst["observed"], "failing": failing}


def range_detail(
    frame: pd.DataFrame, columns: Sequence[str], low: float | None, high: float | None
) -> str:
    """Name, per split (origin), the columns holding values outside [low, high] and their range.

    Args:
        frame: the raw table (or a batch, without ``origin``).
        columns: the feature columns to look at (those that failed).
        low: the lower bound, if any.
        high: the upper bound, if any.
    """
    columns = [c for c in columns if c in frame.columns]
    if not columns:
        return ""
    origin = frame["origin"].astype(str) if "origin" in frame.columns else None
    parts = []
    for split in ORIGINS if origin is not None else ("batch",):
        block = frame[columns] if origin is None else frame.loc[origin == split, columns]
        values = block.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        outside = np.isfinite(values) & (
            (values < (low if low is not None else -np.inf))
            | (values > (high if high is not None else np.inf))
        )
        if not outside.any():
            continue
        bad = values[outside]
        names = [columns[j] for j in np.flatnonzero(outside.any(axis=0))]
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        parts.append(
            f"split {split}: {int(outside.sum())} value(s) in {bad.min():g}..{bad.max():g} "
            f"in {', '.join(names[:3])}{more}"
        )
    if low is not None and high is not None:
        bound = f"{low:g}..{high:g}"
    else:
        bound = f">= {low:g}" if low is not None else f"<= {high:g}"
    return "; ".join(parts) + f" (allowed {bound})" if parts else ""


def infinite_detail(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """Say which features hold infinite values or values beyond float32's range, and how many.

    Args:
        frame: the raw table (or a batch).
        columns: the failing features.
    """
    parts = []
    for c in [c for c in columns if c in frame.columns][:3]:
        values = pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64)
        inf = int(np.isinf(values).sum())
        big = values[np.isfinite(values) & not_float32(values)]
        seen = [f"{inf} infinite"] if inf else []
        if len(big):
            seen.append(f"{len(big)} beyond float32's range, up to {np.abs(big).max():g}")
        parts.append(f"{c} ({', '.join(seen)})")
    more = f" and {len(columns) - 3} more" if len(columns) > 3 else ""
    return (
        f"{', '.join(parts)}{more}: infinite, or beyond float32's range (|x| > "
        f"{FLOAT32_MAX:.6g}), which float32, the dtype models train and predict in, holds as inf"
    )


def row_id_detail(features: pd.DataFrame, columns: Sequence[str]) -> str:
    """Say which features are row numbers or ids, their range, and how to keep them out.

    Args:
        features: the profile's per-feature table.
        columns: the flagged features.
    """
    table = features.set_index("feature")
    shown = ", ".join(
        f"{c} ({_whole(table.at[c, 'min'])}..{_whole(table.at[c, 'max'])})" for c in columns[:3]
    ) + (f" and {len(columns) - 3} more" if len(columns) > 3 else "")
    listed = ", ".join(repr(c) for c in columns)
    return (
        f"{shown}: distinct integers, one per row, as a row number or id holds; a model can "
        "learn the row order instead of the data (and the label, when the file is sorted by "
        f"it). List it in data.exclude_columns (kept for slicing, never a feature): [{listed}]"
    )


def _whole(value: Any) -> str:
    """An integer-valued number in full (``3000000017``, not ``3e+09``); any other as ``:g``."""
    number = float(value)
    return str(int(number)) if np.isfinite(number) and number == int(number) else f"{number:g}"


def _drift_entry(prof: Profile) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Column, observed value and failing features of the dataset drift check."""
    d = prof.drift
    drifted = [f for f in d["features"] if f["drift"] == 1]
    failing = [
        {"column": f["feature"], "observed": f["drift_statistic"], "reason": f["drift_reason"]}
        for f in drifted
    ]
    observed = {
        "method": d["method"],
        "drifted": d["n_drifted"],
        "tested": d["n_tested"],
        "share": round(d["drifted_share"], 4),
    }
    names = [f["feature"] for f in (drifted or d["features"][:1])]
    column = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return column or None, observed, failing


def _entry(prof: Profile, check: Check, res: Any) -> dict[str, Any]:
    """One line of the compact report: which column, what was seen, the bound, pass/fail."""
    result = res.result or {}
    column, observed, failing = check.column, result.get("observed_value"), []
    detail = None
    if _raised(res):
        observed = "not evaluated: " + str(
            (res.exception_info or {}).get("exception_message") or "the column is missing"
        )
    elif check.name == "drift":
        column, observed, failing = _drift_entry(prof)
    elif check.table in ("features", "classes"):
        item = _per_item(prof, check, result)
        column, observed, failing = item["column"], item["observed"], item["failing"]
        if check.name == "no_row_id_features" and failing:
            detail = row_id_detail(prof.features, [f["column"] for f in failing])
        if check.name == "no_infinite_features" and failing:
            detail = infinite_detail(prof.frame, [f["column"] for f in failing])
        if check.name in ("value_min", "value_max") and failing:
            bound = check.kwargs.get("min_value", check.kwargs.get("max_value"))
            low, high = (bound, None) if check.name == "value_min" else (None, bound)
            detail = range_detail(prof.frame, [f["column"] for f in failing], low, high)
    elif check.name == "schema_columns":
        mismatch = (result.get("details") or {}).get("mismatched") or {}
        observed = {k: mismatch.get(k, []) for k in ("missing", "unexpected")}
        column = ", ".join(observed["missing"] + observed["unexpected"]) or None
    elif check.name == "label_set":
        observed = sorted(prof.rows["label"].dropna().unique().tolist())
    elif check.name == "duplicate_rows":
        unique = result.get("observed_value")
        observed = None if unique is None else 1.0 - float(unique)
    elif check.name in ("schema_origin", "no_missing_labels"):
        observed = {
            "unexpected_count": result.get("unexpected_count", 0),
            "examples": (result.get("partial_unexpected_list") or [])[:5],
        }
    return plain(
        {
            "name": check.name,
            "expectation": res.expectation_config.type,
            "description": check.describe,
            "column": column,
            "observed": observed,
            "bound": check.bound,
            "success": bool(res.success),
            **({"failing_columns": failing[:20], "n_failing": len(failing)} if failing else {}),
            **({"detail": detail} if detail else {}),
        }
    )


def summarize(
    prof: Profile, checks: Sequence[Check], results: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    """Build the compact machine report (``validation.json``).

    Args:
        prof: the profile tables.
        checks: the expectations that ran.
        results: GX results per check name, from :func:`run_suites`.
        meta: the raw metadata.
    """
    entries = [_entry(prof, check, results[check.name]) for check in checks]
    return plain(
        {
            "success": all(e["success"] for e in entries),
            "source": meta.get("source"),
            "n_rows": len(prof.rows),
            "n_features": len(prof.features),
            "content_hash": meta.get("content_hash"),
            "partitions": prof.partitions,
            "drift": prof.drift,
            "n_expectations": len(entries),
            "n_failed": sum(not e["success"] for e in entries),
            "expectations": entries,
        }
    )


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per failed expectation: name, column, observed value, bound and why.

    Args:
        report: the compact report from :func:`summarize` (or a batch report).
    """
    lines = []
    for e in report["expectations"]:
        if e["success"]:
            continue
        what = "classes" if e["column"] == "label" else "columns"
        more = f" ({e['n_failing']} {what} fail)" if e.get("n_failing", 0) > 1 else ""
        column = "" if e["column"] is None else f"column {e['column']!s}: "
        why = e.get("detail") or "; ".join(
            f"{f['column']}: {f['reason']}"
            for f in e.get("failing_columns", [])[:3]
            if f.get("reason")
        )
        lines.append(
            f"FAILED {e['name']}: {column}observed {e['observed']!s}, "
            f"bound {e['bound']!s}{more} -- {e['description']}" + (f" [{why}]" if why else "")
        )
    return lines


def render_html(report: dict[str, Any], title: str = "Data validation") -> str:
    """Render a validation report (stage or batch) as a self-contained HTML page.

    Args:
        report: the compact report from :func:`summarize` or a batch report.
        title: the page heading.
    """
    from jinja2 import Environment, PackageLoader

    env = Environment(
        loader=PackageLoader("nnops", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    drift = report.get("drift") or {}
    shown = [f for f in drift.get("features", []) if f.get("drift") == 1]
    rest = [f for f in drift.get("features", []) if f.get("drift") != 1]
    shown += rest[: max(0, DRIFT_ROWS_SHOWN - len(shown))]
    return env.get_template("validation.html.j2").render(
        title=title, report=report, drift=drift, drift_rows=shown
    )


def _num(value: Any) -> str:
    """Format a number for the report: 4 significant digits, or as-is for text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
