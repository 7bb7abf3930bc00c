"""Slice and per-class metrics: hand-checked numbers, flags and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from nnops import slices
from nnops.errors import NnopsError

pytestmark = pytest.mark.unit

# 10 rows: overall accuracy 0.7; region "north" 4/4 right, "south" 3/6 right.
Y_TRUE = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
Y_PRED = np.array([0, 1, 0, 1, 0, 0, 1, 1, 1, 1])
REGION = np.array(["north"] * 4 + ["south"] * 6)


def _by_value(rows):
    return {(r.column, r.value): r for r in rows}


def test_slice_metrics_match_hand_counts():
    rows = _by_value(slices.slice_metrics(Y_TRUE, Y_PRED, {"region": REGION}, max_gap=0.05))
    north, south = rows[("region", "north")], rows[("region", "south")]
    assert (north.support, north.accuracy, north.f1_macro) == (4, 1.0, 1.0)
    assert south.support == 6
    assert south.accuracy == pytest.approx(0.5)
    # south: true 0,1,0,1,0,1 / pred 0,0,1,1,1,1 -> class 0 P=1/2 R=1/3, class 1 P=2/4 R=2/3
    f1_0 = 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    f1_1 = 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)
    assert south.f1_macro == pytest.approx((f1_0 + f1_1) / 2)
    assert south.gap == pytest.approx(0.2)
    assert south.flagged and not north.flagged


def test_flag_threshold_is_the_param():
    rows = _by_value(slices.slice_metrics(Y_TRUE, Y_PRED, {"region": REGION}, max_gap=0.25))
    assert not rows[("region", "south")].flagged


def test_worst_slice_first_within_each_column():
    other = np.array(["a", "b"] * 5)
    rows = slices.slice_metrics(Y_TRUE, Y_PRED, {"region": REGION, "parity": other}, 0.05)
    assert [r.column for r in rows] == ["region", "region", "parity", "parity"]
    assert rows[0].value == "south"
    assert rows[2].accuracy <= rows[3].accuracy


def test_numeric_slice_values_become_strings():
    rows = slices.slice_metrics(Y_TRUE, Y_PRED, {"bucket": np.arange(10) % 2}, 0.05)
    assert {r.value for r in rows} == {"0", "1"}
    assert sum(r.support for r in rows) == 10


def test_misaligned_slice_column_is_named():
    with pytest.raises(NnopsError, match="slice column 'region' has 3 values for 10 test rows"):
        slices.slice_metrics(Y_TRUE, Y_PRED, {"region": REGION[:3]}, 0.05)


def test_class_recalls_flag_the_weak_class():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])  # class 2 never recognised
    rows = slices.class_recalls(y_true, y_pred, ["zero", "one", "two"], max_gap=0.05)
    assert rows[0].value == "two" and rows[0].accuracy == 0.0 and rows[0].flagged
    assert rows[0].gap == pytest.approx(0.8)
    assert {r.value for r in rows if not r.flagged} == {"zero", "one"}
    assert [r.support for r in rows] == [2, 4, 4]


def test_absent_class_is_not_flagged():
    rows = slices.class_recalls(np.array([0, 1]), np.array([0, 1]), ["a", "b", "c"], 0.05)
    absent = _by_value(rows)[("class", "c")]
    assert absent.support == 0 and not absent.flagged


def test_select_slices_names_the_column_and_the_available_ones():
    available = slices.slice_arrays({"x": np.zeros(3), "slice__sex": REGION, "slice__age": REGION})
    assert set(available) == {"sex", "age"}
    with pytest.raises(NnopsError) as info:
        slices.select_slices(available, ["sex", "race"], "data/processed")
    message = str(info.value)
    assert "'race'" in message and "available slice columns: age, sex" in message
    assert "data/processed" in message


def test_select_slices_when_there_are_none():
    with pytest.raises(NnopsError, match="available slice columns: none"):
        slices.select_slices({}, ["sex"])


def test_summary_lists_flagged_rows():
    rows = slices.slice_metrics(Y_TRUE, Y_PRED, {"region": REGION}, 0.05)
    classes = slices.class_recalls(Y_TRUE, Y_PRED, ["n", "p"], 0.05)
    summary = slices.summarize(Y_TRUE, Y_PRED, rows, classes, 0.05)
    # class 0: P 3/4 R 3/5 -> F1 2/3; class 1: P 4/6 R 4/5 -> F1 8/11
    f1 = pytest.approx((2 / 3 + 8 / 11) / 2)
    assert summary["overall"] == {"accuracy": 0.7, "f1_macro": f1, "support": 10}
    assert [r["value"] for r in summary["flagged_slices"]] == ["south"]
    # class 0 recall 3/5 = 0.6 (gap 0.1, flagged); class 1 recall 4/5 = 0.8
    assert [r["value"] for r in summary["flagged_classes"]] == ["n"]


def test_slice_report_writes_the_json_and_csv_explain_publishes():
    import csv
    import io
    import json

    from conftest import section

    params = section("explain", slice_by=("region",), slice_max_gap=0.05)
    summary, files = slices.slice_report(Y_TRUE, Y_PRED, {"region": REGION}, ["n", "p"], params)
    assert json.loads(files["slices.json"]) == json.loads(json.dumps(summary))
    rows = list(csv.DictReader(io.StringIO(files["slices.csv"].decode())))
    assert list(rows[0]) == list(slices.CSV_COLUMNS)
    assert [(r["column"], r["value"], r["flagged"]) for r in rows] == [
        ("region", "south", "True"),
        ("region", "north", "False"),
        ("class", "n", "True"),
        ("class", "p", "False"),
    ]
