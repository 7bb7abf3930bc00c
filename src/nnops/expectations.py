"""The expectations the validate stage runs, and the Great Expectations suites that run them.

Each :class:`Check` is one GX expectation on one of the profile's small tables (see
:mod:`nnops.data_profile`); :func:`run_suites` validates each table with its suite in an
ephemeral GX context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nnops.config import ValidateParams
from nnops.data_profile import ORIGINS, Profile, value_bounds

NUMERIC_DTYPES = (
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64",
)  # fmt: skip
INTEGER_DTYPES = NUMERIC_DTYPES[:8]


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
         "n_infinite", 0, "no feature value is infinite, or beyond float32's range"),
        ("no_row_id_features", "features", in_set, {"column": "row_id", "value_set": [0]},
         "row_id", "none", "no feature is a row number or id (distinct integers, one per row)"),
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
         "every class's share of rows is within validate.min_class_fraction and "
         "validate.max_class_fraction"),
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
    spec.append(("drift", "features", in_set,
                 {"column": "drift", "value_set": [0.0], "mostly": 1.0 - v.drift_share},
                 "drift", f"share <= {v.drift_share:g}",
                 "share of features whose train and test partitions differ"))  # fmt: skip
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
