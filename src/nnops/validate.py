"""Check the raw table with a Great Expectations suite built in code.

Pixel data has hundreds of feature columns, and one GX expectation per column is slow (81 s on
MNIST-shaped data). Instead :func:`profile` condenses the raw table, with vectorised numpy, into
small tables that keep every guarantee:

- ``columns``: the raw table with no rows (names and order, for the schema check);
- ``rows``: one row per example: ``label``, ``origin`` and a ``row_hash`` over features + label;
- ``features``: one row per feature column: dtype, missing and infinite counts, finite min and
  max, and the Kolmogorov-Smirnov statistic between the train and test partitions;
- ``classes``: one row per class: count and share of rows.

GX then checks these tables (:func:`build_checks`, :func:`run_suites`), and :func:`summarise`
turns its results into the compact report, naming the offending column for each expectation.
"""

from __future__ import annotations

import html
import importlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nnops.config import SplitParams, ValidateParams
from nnops.errors import NnopsError
from nnops.split import split_indices

log = logging.getLogger(__name__)

NUMERIC_DTYPES = (
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64",
)  # fmt: skip
INTEGER_DTYPES = NUMERIC_DTYPES[:8]
ORIGINS = ("train", "test")


@dataclass(frozen=True)
class Profile:
    """The small tables GX checks, plus what the report needs to describe them."""

    columns: pd.DataFrame
    rows: pd.DataFrame
    features: pd.DataFrame
    classes: pd.DataFrame
    expected_columns: list[str]
    n_classes: int
    partitions: dict[str, Any]


@dataclass(frozen=True)
class Check:
    """One expectation: a short name, the table it runs on, the GX class and how to report it."""

    name: str
    table: str
    kind: str
    kwargs: dict[str, Any]
    column: str | None
    bound: Any
    describe: str


def import_gx_in_background() -> threading.Thread:
    """Start importing Great Expectations in a daemon thread and return the thread.

    The import takes seconds; reading and profiling the raw table (numpy and pyarrow, which
    release the GIL) can run meanwhile. :func:`run_suites` imports GX as usual, waiting for this
    import to finish; an import error surfaces there.
    """

    def _import() -> None:
        try:
            importlib.import_module("great_expectations")
        except Exception:  # reported again, in the main thread, by run_suites
            log.debug("background import of great_expectations failed", exc_info=True)

    thread = threading.Thread(target=_import, name="import-gx", daemon=True)
    thread.start()
    return thread


def value_bounds(params: ValidateParams, meta: dict[str, Any]) -> tuple[float | None, float | None]:
    """Return the (min, max) feature bounds: the params when set, else the source's pixel range.

    Args:
        params: the ``validate`` params section.
        meta: the raw metadata (``value_range`` is null for csv: unbounded).
    """
    known = meta.get("value_range") or (None, None)
    low = params.value_min if params.value_min is not None else known[0]
    high = params.value_max if params.value_max is not None else known[1]
    return low, high


def ks_statistics(columns: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two-sample Kolmogorov-Smirnov statistic per feature between two sets of rows.

    Small non-negative integers (pixels) are counted with ``bincount``; other values are
    compared through sorted samples. Non-finite values are left out; a feature with no finite
    values in either set gets NaN.

    Args:
        columns: feature values, shape (n_features, n_rows), one row per feature.
        first: row indices of the first sample (train).
        second: row indices of the second sample (test).
    """
    a, b = columns[:, first], columns[:, second]
    out = np.full(columns.shape[0], np.nan)
    if a.shape[1] == 0 or b.shape[1] == 0:
        return out
    small_ints = (
        np.issubdtype(columns.dtype, np.integer)
        and min(a.min(), b.min()) >= 0
        and max(a.max(), b.max()) < 1 << 16
    )
    if small_ints:
        size = int(max(a.max(), b.max())) + 1
        for j in range(columns.shape[0]):
            ca = np.cumsum(np.bincount(a[j], minlength=size)) / a.shape[1]
            cb = np.cumsum(np.bincount(b[j], minlength=size)) / b.shape[1]
            out[j] = np.abs(ca - cb).max()
        return out
    for j in range(columns.shape[0]):
        x, y = a[j], b[j]
        x = np.sort(x[np.isfinite(x)])
        y = np.sort(y[np.isfinite(y)])
        if len(x) == 0 or len(y) == 0:
            continue
        points = np.concatenate([x, y])
        cdf_x = np.searchsorted(x, points, side="right") / len(x)
        cdf_y = np.searchsorted(y, points, side="right") / len(y)
        out[j] = np.abs(cdf_x - cdf_y).max()
    return out


def _feature_blocks(frame: pd.DataFrame, features: Sequence[str]) -> list[tuple[list[str], Any]]:
    """Group feature columns by dtype; each group as a (n_features, n_rows) array."""
    present = [c for c in features if c in frame.columns]
    blocks = []
    for _, names in pd.Series(present, dtype=object).groupby(
        [str(frame[c].dtype) for c in present], sort=False
    ):
        names = list(names)
        block = frame[names]
        if not all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
            block = block.apply(pd.to_numeric, errors="coerce")
        values = block.to_numpy()
        if values.dtype.kind == "b":
            values = values.astype(np.uint8)
        blocks.append((names, np.ascontiguousarray(values.T)))
    return blocks


def _split_for_drift(
    frame: pd.DataFrame, split: SplitParams
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return the train and test row indices preprocess will use (empty if it cannot split)."""
    labels = pd.to_numeric(frame.get("label"), errors="coerce")
    labels = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=-1).astype(np.int64)
    origin = frame["origin"].astype(str).to_numpy() if "origin" in frame.columns else None
    own = origin is not None and bool(np.any(origin == "test"))
    basis = "the source's own test split" if own else "the seeded stratified split preprocess uses"
    try:
        parts = split_indices(labels, origin, split.val_fraction, split.test_fraction, split.seed)
    except NnopsError as exc:
        empty = np.array([], dtype=np.int64)
        return empty, empty, {"basis": basis, "error": str(exc)}
    n, m = len(parts.train), len(parts.test)
    # KS statistic that two samples of these sizes from one distribution exceed 1% of the time
    noise = 1.628 * math.sqrt((n + m) / (n * m))
    info = {"basis": basis, "train": n, "test": m, "ks_noise_1pct": round(noise, 4)}
    return parts.train, parts.test, info


def profile(frame: pd.DataFrame, meta: dict[str, Any], split: SplitParams) -> Profile:
    """Condense the raw table into the small tables the suite checks.

    Args:
        frame: the raw table (``data/raw/data.parquet``).
        meta: the raw metadata (``data/raw/meta.json``).
        split: the ``split`` params, to draw the train/test partitions for drift.
    """
    features = list(meta["feature_names"])
    expected = [*features, "label", "origin", *meta.get("exclude_columns", [])]
    train, test, partitions = _split_for_drift(frame, split)
    records = []
    for names, values in _feature_blocks(frame, features):
        floating = values.dtype.kind == "f"
        if floating:
            missing = np.isnan(values).sum(axis=1)
            infinite = np.isinf(values).sum(axis=1)
            finite = np.isfinite(values)
            low = np.where(finite, values, np.inf).min(axis=1, initial=np.inf)
            high = np.where(finite, values, -np.inf).max(axis=1, initial=-np.inf)
        else:
            missing = infinite = np.zeros(len(names), dtype=np.int64)
            low = values.min(axis=1, initial=np.iinfo(values.dtype).max).astype(np.float64)
            high = values.max(axis=1, initial=np.iinfo(values.dtype).min).astype(np.float64)
        ks = ks_statistics(values, train, test)
        for i, name in enumerate(names):
            records.append(
                (name, str(frame[name].dtype), missing[i], infinite[i], low[i], high[i], ks[i])
            )
    table = pd.DataFrame(
        records, columns=["feature", "dtype", "n_missing", "n_infinite", "min", "max", "ks"]
    )
    order = {name: i for i, name in enumerate(features)}
    table = table.sort_values("feature", key=lambda s: s.map(order)).reset_index(drop=True)
    table[["min", "max"]] = table[["min", "max"]].replace([np.inf, -np.inf], np.nan)

    hashed = [c for c in (*features, "label") if c in frame.columns]
    rows = pd.DataFrame(
        {
            **{c: frame[c].to_numpy() for c in ("label", "origin") if c in frame.columns},
            "row_hash": pd.util.hash_pandas_object(frame[hashed], index=False).to_numpy(),
        }
    )
    class_names = list(meta["class_names"])
    labels = pd.to_numeric(frame.get("label", pd.Series(dtype=float)), errors="coerce")
    counts = labels.value_counts().reindex(range(len(class_names)), fill_value=0)
    classes = pd.DataFrame(
        {
            "class_index": range(len(class_names)),
            "class_name": class_names,
            "count": counts.to_numpy(),
            "fraction": counts.to_numpy() / max(len(frame), 1),
        }
    )
    return Profile(
        columns=frame.iloc[:0],
        rows=rows,
        features=table,
        classes=classes,
        expected_columns=expected,
        n_classes=len(class_names),
        partitions=partitions,
    )


def build_checks(prof: Profile, params: ValidateParams, meta: dict[str, Any]) -> list[Check]:
    """Build the expectations for the profile tables from the data and params.

    Args:
        prof: the profile from :func:`profile`.
        params: the ``validate`` params section.
        meta: the raw metadata (class names and the source's value range).
    """
    low, high = value_bounds(params, meta)
    v = params
    between = "ExpectColumnValuesToBeBetween"
    in_set = "ExpectColumnValuesToBeInSet"
    spec: list[tuple[str, str, str, dict[str, Any], str | None, Any, str]] = [
        ("schema_columns", "columns", "ExpectTableColumnsToMatchSet",
         {"column_set": prof.expected_columns, "exact_match": True},
         None, f"{len(prof.expected_columns)} columns from meta.json",
         "the raw table has exactly the expected columns"),
        ("schema_feature_dtypes", "features", in_set,
         {"column": "dtype", "value_set": list(NUMERIC_DTYPES)},
         "dtype", "numeric", "every feature column is numeric"),
        ("schema_label_dtype", "rows", "ExpectColumnValuesToBeInTypeList",
         {"column": "label", "type_list": list(INTEGER_DTYPES)},
         "label", "integer", "the label column holds integers"),
        ("schema_origin", "rows", in_set, {"column": "origin", "value_set": list(ORIGINS)},
         "origin", list(ORIGINS), "origin is train or test"),
        ("no_missing_features", "features", between, {"column": "n_missing", "max_value": 0},
         "n_missing", 0, "no feature value is missing (null/NaN)"),
        ("no_infinite_features", "features", between, {"column": "n_infinite", "max_value": 0},
         "n_infinite", 0, "no feature value is infinite"),
        ("no_missing_labels", "rows", "ExpectColumnValuesToNotBeNull", {"column": "label"},
         "label", 0, "no label is missing"),
        ("label_set", "rows", "ExpectColumnDistinctValuesToEqualSet",
         {"column": "label", "value_set": list(range(prof.n_classes))},
         "label", f"0..{prof.n_classes - 1}", "labels are exactly the known class indices"),
        ("min_rows", "rows", "ExpectTableRowCountToBeBetween", {"min_value": v.min_rows},
         None, f">= {v.min_rows}", "enough rows (validate.min_rows)"),
        ("class_balance", "classes", between,
         {"column": "fraction", "min_value": v.min_class_fraction,
          "max_value": v.max_class_fraction},
         "fraction", [v.min_class_fraction, v.max_class_fraction],
         "every class's share of rows is within bounds"),
        ("duplicate_rows", "rows", "ExpectColumnProportionOfUniqueValuesToBeBetween",
         {"column": "row_hash", "min_value": 1.0 - v.max_duplicate_fraction},
         "row_hash", f"<= {v.max_duplicate_fraction:g}",
         "share of rows repeating an earlier row (features + label)"),
    ]  # fmt: skip
    if low is not None:
        spec.append(("value_min", "features", between, {"column": "min", "min_value": low},
                     "min", f">= {low:g}", "no feature value below the lower bound"))  # fmt: skip
    if high is not None:
        spec.append(("value_max", "features", between, {"column": "max", "max_value": high},
                     "max", f"<= {high:g}", "no feature value above the upper bound"))  # fmt: skip
    noise = prof.partitions.get("ks_noise_1pct")
    if noise and v.drift_max_ks < noise:
        log.warning(
            "validate.drift_max_ks=%g is below the sampling noise of these partition sizes "
            "(KS %.3f at 1%%); the drift check may fail on data without drift",
            v.drift_max_ks,
            noise,
        )
    spec.append(("drift_ks", "features", between, {"column": "ks", "max_value": v.drift_max_ks},
                 "ks", f"<= {v.drift_max_ks:g}",
                 "KS statistic between train and test partitions, per feature"))  # fmt: skip
    return [Check(*item) for item in spec]


def run_suites(prof: Profile, checks: Sequence[Check]) -> dict[str, Any]:
    """Validate each profile table with its GX suite in an ephemeral context.

    Returns the GX validation result per check name.

    Args:
        prof: the profile tables.
        checks: the expectations from :func:`build_checks`.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("nnops_raw")
    index_columns = {"features": ["feature"], "classes": ["class_name"]}
    results: dict[str, Any] = {}
    for table in ("columns", "rows", "features", "classes"):
        mine = [c for c in checks if c.table == table]
        if not mine:
            continue
        asset = source.add_dataframe_asset(table)
        batch = asset.add_batch_definition_whole_dataframe(table).get_batch(
            batch_parameters={"dataframe": getattr(prof, table)}
        )
        expectations = [
            getattr(gxe, c.kind)(**c.kwargs, meta={"nnops_check": c.name}) for c in mine
        ]
        suite = gx.ExpectationSuite(name=f"nnops_{table}", expectations=expectations)
        result_format: dict[str, Any] = {"result_format": "COMPLETE"}
        if table in index_columns:
            result_format["unexpected_index_column_names"] = index_columns[table]
        outcome = batch.validate(suite, result_format=result_format)
        for res in outcome.results:
            results[res.expectation_config.meta["nnops_check"]] = res
    return results


def _plain(value: Any) -> Any:
    """Turn numpy scalars and containers into JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


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


def _entry(prof: Profile, check: Check, res: Any) -> dict[str, Any]:
    """One line of the compact report: which column, what was seen, the bound, pass/fail."""
    result = res.result or {}
    column, observed, failing = check.column, result.get("observed_value"), []
    if _raised(res):
        observed = "not evaluated: " + str(
            (res.exception_info or {}).get("exception_message") or "the column is missing"
        )
    elif check.table in ("features", "classes"):
        item = _per_item(prof, check, result)
        column, observed, failing = item["column"], item["observed"], item["failing"]
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
    return _plain(
        {
            "name": check.name,
            "expectation": res.expectation_config.type,
            "description": check.describe,
            "column": column,
            "observed": observed,
            "bound": check.bound,
            "success": bool(res.success),
            **({"failing_columns": failing[:20], "n_failing": len(failing)} if failing else {}),
        }
    )


def summarise(
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
    return _plain(
        {
            "success": all(e["success"] for e in entries),
            "source": meta.get("source"),
            "n_rows": len(prof.rows),
            "n_features": len(prof.features),
            "content_hash": meta.get("content_hash"),
            "partitions": prof.partitions,
            "n_expectations": len(entries),
            "n_failed": sum(not e["success"] for e in entries),
            "expectations": entries,
        }
    )


def failure_lines(report: dict[str, Any]) -> list[str]:
    """One line per failed expectation: name, column, observed value and bound.

    Args:
        report: the compact report from :func:`summarise`.
    """
    lines = []
    for e in report["expectations"]:
        if e["success"]:
            continue
        more = f" ({e['n_failing']} columns fail)" if e.get("n_failing", 0) > 1 else ""
        lines.append(
            f"FAILED {e['name']}: column {e['column']!s}: observed {e['observed']!s}, "
            f"bound {e['bound']!s}{more} -- {e['description']}"
        )
    return lines


def render_html(report: dict[str, Any]) -> str:
    """Render the compact report as a self-contained HTML page.

    Args:
        report: the compact report from :func:`summarise`.
    """

    def cell(value: Any) -> str:
        return html.escape(str(value))

    status = "PASSED" if report["success"] else "FAILED"
    rows = "\n".join(
        f'<tr class="{"ok" if e["success"] else "fail"}"><td>{"pass" if e["success"] else "FAIL"}'
        f"</td><td>{cell(e['name'])}</td><td>{cell(e['description'])}</td>"
        f"<td><code>{cell(e['expectation'])}</code></td><td>{cell(e['column'])}</td>"
        f"<td>{cell(e['observed'])}</td><td>{cell(e['bound'])}</td></tr>"
        for e in report["expectations"]
    )
    parts = report.get("partitions", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nnops data validation: {status}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3em .6em; }}
tr.fail {{ background: #fdd; }} tr.ok td:first-child {{ color: #070; }}
</style></head><body>
<h1>Data validation: {status}</h1>
<p>Source <b>{cell(report["source"])}</b>, {report["n_rows"]} rows, {report["n_features"]}
features; {report["n_failed"]} of {report["n_expectations"]} expectations failed.
Drift compares train ({cell(parts.get("train", "-"))} rows) and test
({cell(parts.get("test", "-"))} rows) from {cell(parts.get("basis", ""))}.
Content hash <code>{cell(report.get("content_hash"))}</code>.</p>
<p>Checked by Great Expectations on per-feature, per-row and per-class summaries of the raw
table; "column" names the worst (or first failing) column for per-feature checks.</p>
<table><thead><tr><th>result</th><th>check</th><th>what</th><th>GX expectation</th>
<th>column</th><th>observed</th><th>bound</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>
"""
