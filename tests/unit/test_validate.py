"""validate: a real GX suite over profile tables; each failure kind caught from a bad raw file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp, wasserstein_distance

from conftest import section, stage_in_process
from nnops import data_profile, drift, expectations, validation_report
from nnops.ingest import from_arrays
from nnops.raw import RawData, read_raw, write_raw

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def clean_raw() -> RawData:
    """Pixel-like data (3x3, values 0..16, 3 balanced classes) with its own test split."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 17, (3000, 3, 3), dtype=np.uint8)
    x_test = rng.integers(0, 17, (1000, 3, 3), dtype=np.uint8)
    y_train, y_test = np.arange(3000) % 3, np.arange(1000) % 3
    return from_arrays("npz", x_train, y_train, x_test, y_test, value_range=(0.0, 16.0))


def check(tmp_path: Path, raw: RawData, **overrides: object) -> dict:
    """Write ``raw`` as a raw data file, read it back and validate it like the stage does."""
    write_raw(raw, tmp_path / "raw")
    back = read_raw(tmp_path / "raw")
    prof = data_profile.profile(
        back.frame, back.meta, section("split"), section("validate", **overrides)
    )
    checks = expectations.build_checks(prof, section("validate", **overrides), back.meta)
    return validation_report.summarize(
        prof, checks, expectations.run_suites(prof, checks), back.meta
    )


def failed(report: dict) -> dict[str, dict]:
    return {e["name"]: e for e in report["expectations"] if not e["success"]}


def test_clean_data_passes_every_expectation(tmp_path: Path):
    report = check(tmp_path, clean_raw())
    assert report["success"] and failed(report) == {}
    names = {e["name"] for e in report["expectations"]}
    assert {"schema_columns", "schema_feature_dtypes", "no_missing_features",
            "no_infinite_features", "value_min", "value_max", "label_set", "min_rows",
            "class_balance", "duplicate_rows", "drift"} <= names  # fmt: skip
    parts = report["partitions"]
    assert (parts["basis"], parts["train"], parts["test"]) == (
        "the source's own test split", 2550, 1000,
    )  # fmt: skip
    entry = next(e for e in report["expectations"] if e["name"] == "drift")
    assert entry["observed"] == {"method": "wasserstein", "drifted": 0, "tested": 9, "share": 0}
    assert entry["column"].startswith("px_")  # the closest call
    assert report["drift"]["n_reference"] == 2550 and len(report["drift"]["features"]) == 9


def frame_edit(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> RawData:
    raw = clean_raw()
    return RawData(frame=edit(raw.frame.copy()), meta=raw.meta)


def set_cell(column: str, value: object, rows=slice(0, 1)) -> Callable:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        if isinstance(value, float) or value is None:
            frame[column] = frame[column].astype("float64")
        elif isinstance(value, str):
            frame[column] = frame[column].astype(str)
        frame.loc[frame.index[rows], column] = value
        return frame

    return edit


def duplicate_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows 400..799 replaced by copies of rows 0..399: 400 of 4000 rows repeat another."""
    return pd.concat([frame.iloc[:400], frame.iloc[:400], frame.iloc[800:]], ignore_index=True)


def rare_class(frame: pd.DataFrame) -> pd.DataFrame:
    keep = (frame["label"] != 2) | (frame.index % 50 == 0)
    return frame[keep].reset_index(drop=True)


def shifted_test(frame: pd.DataFrame) -> pd.DataFrame:
    test = frame["origin"] == "test"
    frame.loc[test, "px_7"] = np.minimum(frame.loc[test, "px_7"] + 6, 16).astype(np.uint8)
    return frame


def extra_column(frame: pd.DataFrame) -> pd.DataFrame:
    frame["extra"] = 1.0
    return frame


# (edit of a clean file, the check that must fail, the column it must name, observed value)
BAD_FILES = {
    "extra column": (extra_column, "schema_columns", "extra", None),
    "text feature": (set_cell("px_3", "x"), "schema_feature_dtypes", "px_3", "str"),
    "missing value": (set_cell("px_2", np.nan), "no_missing_features", "px_2", 1),
    "infinite value": (set_cell("px_4", np.inf), "no_infinite_features", "px_4", 1),
    "value above range": (set_cell("px_1", 17), "value_max", "px_1", 17),
    "value below range": (set_cell("px_0", -1.0), "value_min", "px_0", -1),
    "unknown label": (set_cell("label", 5), "label_set", "label", [0, 1, 2, 5]),
    "float label": (set_cell("label", 1.5), "schema_label_dtype", "label", "float64"),
    "missing label": (set_cell("label", None), "no_missing_labels", "label", None),
    "bad origin": (set_cell("origin", "holdout"), "schema_origin", "origin", None),
    "duplicates": (duplicate_rows, "duplicate_rows", "row_hash", 0.1),
    "rare class": (rare_class, "class_balance", "label", None),
    "drift": (shifted_test, "drift", "px_7", None),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_each_bad_file_fails_its_expectation_and_names_the_column(tmp_path: Path, case: str):
    edit, name, column, observed = BAD_FILES[case]
    report = check(tmp_path, frame_edit(edit))
    assert not report["success"]
    bad = failed(report)
    assert name in bad, f"{name} did not fail; failed: {sorted(bad)}"
    assert column in str(bad[name]["column"])
    if observed is not None:
        assert (
            bad[name]["observed"] == pytest.approx(observed)
            if isinstance(observed, float)
            else bad[name]["observed"] == observed
        )
    line = next(
        x for x in validation_report.failure_lines(report) if x.startswith(f"FAILED {name}:")
    )
    assert column in line and str(bad[name]["bound"]) in line
    # GX's verdict on the drift expectation and the drift summary agree
    assert report["drift"]["drifted"] == (name == "drift")
    if name == "drift":
        assert bad[name]["failing_columns"][0]["reason"].startswith("Wasserstein")
        assert "std > 0.1 (KS" in line


def test_failing_checks_are_specific(tmp_path: Path):
    """A value out of range fails the range check only, not schema, nulls or drift."""
    report = check(tmp_path, frame_edit(set_cell("px_1", 17)))
    assert set(failed(report)) == {"value_max"}
    assert failed(report)["value_max"]["bound"] == "<= 16"


def test_too_few_rows(tmp_path: Path):
    report = check(tmp_path, clean_raw(), min_rows=5000)
    assert set(failed(report)) == {"min_rows"}
    assert failed(report)["min_rows"]["observed"] == 4000
    [line] = validation_report.failure_lines(report)
    assert line.startswith("FAILED min_rows: observed 4000, bound >= 5000"), line


def test_a_class_check_failing_for_several_classes_counts_classes(tmp_path: Path):
    report = check(tmp_path, clean_raw(), max_class_fraction=0.2)
    [line] = validation_report.failure_lines(report)
    assert line.startswith("FAILED class_balance: column label:") and "(3 classes fail)" in line
    assert line.endswith("within validate.min_class_fraction and validate.max_class_fraction")


def test_class_balance_names_the_class_and_share(tmp_path: Path):
    bad = failed(check(tmp_path, frame_edit(rare_class)))["class_balance"]
    assert list(bad["observed"]) == ["class 2"] and bad["observed"]["class 2"] < 0.02


def test_params_bounds_override_the_source_range(tmp_path: Path):
    report = check(tmp_path, clean_raw(), value_max=10)
    assert failed(report)["value_max"]["observed"] == 16
    assert failed(report)["value_max"]["n_failing"] == 9


def test_csv_without_bounds_has_no_range_checks():
    assert data_profile.value_bounds(section("validate"), {"value_range": None}) == (None, None)
    bounds = data_profile.value_bounds(section("validate", value_min=-1), {"value_range": [0, 255]})
    assert bounds == (-1, 255)


def test_ks_matches_scipy_for_pixels_and_floats():
    rng = np.random.default_rng(4)
    ints = rng.integers(0, 256, (5, 700), dtype=np.uint8)
    floats = rng.normal(size=(3, 700))
    floats[1, 600:] += 0.7
    first, second = np.arange(500), np.arange(500, 700)
    for values in (ints, floats):
        ours = drift.compare(values, first, second)
        tests = [ks_2samp(v[first], v[second], method="asymp") for v in values]
        np.testing.assert_allclose(ours.ks, [t.statistic for t in tests], rtol=1e-12)
        p = drift.ks_p_values(ours.ks, ours.n_first, ours.n_second)
        np.testing.assert_allclose(p, [t.pvalue for t in tests], rtol=1e-6)
        distance = [wasserstein_distance(v[first], v[second]) for v in values]
        np.testing.assert_allclose(ours.wasserstein, distance, rtol=1e-9)
        np.testing.assert_allclose(ours.std_first, values[:, first].std(axis=1), rtol=1e-9)
    assert drift.compare(floats, first, second).ks[1] > 0.1  # half of the second sample shifted


def test_compare_by_feature_chunks_equals_the_whole_arrays():
    """Many integer features are compared a chunk at a time; every figure stays bit-identical."""
    rng = np.random.default_rng(5)
    n = drift.FEATURE_CHUNK * 2 + 7
    values = rng.integers(0, 40, (n, 900), dtype=np.uint8)
    values[-5:] //= 8  # chunks with a smaller range than the others
    values[3, 880:] = 255  # the maximum only in rows neither sample uses
    first, second = np.arange(0, 600), np.arange(600, 860)
    whole = drift.compare_samples(values[:, first], values[:, second])
    chunked = drift.compare(values, first, second)
    for field in ("ks", "wasserstein", "n_first", "n_second", "mean_first", "std_first"):
        assert np.array_equal(getattr(chunked, field), getattr(whole, field)), field
    assert all(np.array_equal(a, b) for a, b in zip(chunked.sketch, whole.sketch, strict=True))


def test_drift_decision_per_method_and_constant_features():
    """Below drift_switch_rows the adjusted p-value decides; above it the distance must also
    exceed drift_distance; a feature constant in both samples is not tested."""
    rng = np.random.default_rng(2)
    values = rng.normal(size=(4, 3000))
    values[1, 2000:] += 0.05  # significant at this size, yet too small to matter
    values[2, 2000:] += 0.5
    values[3] = 7.0
    first, second = np.arange(2000), np.arange(2000, 3000)
    cmp = drift.compare(values, first, second)
    names = ["same", "tiny", "half", "flat"]
    big = drift.drift_table(names, cmp, 2000, section("validate")).set_index("feature")
    assert big["drift"].to_dict() == pytest.approx(
        {"same": 0.0, "tiny": 0.0, "half": 1.0, "flat": float("nan")}, nan_ok=True
    )
    assert big.at["half", "drift_method"] == "wasserstein"
    assert big.at["half", "wasserstein_std"] == pytest.approx(0.5, abs=0.05)
    assert big.at["half", "drift_reason"].startswith("Wasserstein 0.4")
    assert "std > 0.1 (KS" in big.at["half", "drift_reason"]
    assert big.at["flat", "drift_reason"] == "constant in both samples: not tested"
    small = drift.drift_table(names, cmp, 2000, section("validate", drift_switch_rows=5000))
    assert small.set_index("feature").at["half", "drift_method"] == "ks"
    summary = drift.drift_summary(big.reset_index(), section("validate"), 2000, 1000)
    assert (summary["n_tested"], summary["n_drifted"], summary["drifted"]) == (3, 1, True)
    assert summary["features"][0]["feature"] == "half"  # drifted features first


def test_html_report_shows_each_expectation(tmp_path: Path):
    report = check(tmp_path, frame_edit(set_cell("px_1", 17)))
    page = validation_report.render_html(report)
    drift_rows = min(len(report["drift"]["features"]), validation_report.DRIFT_ROWS_SHOWN)
    assert page.count("<tr class=") == report["n_expectations"] + drift_rows
    assert "FAILED" in page and "px_1" in page


@pytest.fixture
def run_stage(capsys):
    """Run the validate stage in this process on raw data written to ``tmp_path/raw``."""

    def run(tmp_path: Path, raw: RawData) -> subprocess.CompletedProcess:
        write_raw(raw, tmp_path / "raw")
        shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
        return stage_in_process("validate", ["--raw", "raw", "--out", "out"], tmp_path, capsys)

    return run


def test_stage_fails_with_one_line_per_failed_expectation(tmp_path: Path, run_stage):
    proc = run_stage(tmp_path, frame_edit(lambda f: set_cell("px_4", np.inf)(extra_column(f))))
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.startswith("validate: FAILED")]
    assert len(lines) == 2, proc.stderr
    assert any("no_infinite_features: column px_4: observed 1, bound 0" in x for x in lines)
    assert any("schema_columns: column extra" in x for x in lines)
    assert "validate: error: 2 of " in proc.stderr
    report = json.loads((tmp_path / "out/validation.json").read_text())
    assert report["n_failed"] == 2 and (tmp_path / "out/validation.html").exists()


def test_stage_passes_clean_data_and_writes_no_gx_project(tmp_path: Path, run_stage):
    proc = run_stage(tmp_path, clean_raw())
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out/validation.json").read_text())["success"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "params.yaml", "raw"]


def test_stage_without_raw_data_names_the_missing_file(tmp_path: Path, capsys):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    cmd = [sys.executable, str(REPO / "pipelines/validate.py"), "--raw", "nowhere", "--out", "out"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[0] == (
        "validate: error: nowhere/meta.json: file not found (did the previous stage run?)"
    )
    assert "no earlier run of validate is recorded in dvc.lock" in proc.stderr
    assert not (tmp_path / "out").exists()
    # Another stage's run (check_params always runs first) does not count; validate's does.
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  check_params: {cmd: c}\n")
    proc = stage_in_process("validate", ["--raw", "nowhere", "--out", "out"], tmp_path, capsys)
    assert "no earlier run of validate is recorded" in proc.stderr
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  validate: {cmd: v}\n")
    proc = stage_in_process("validate", ["--raw", "nowhere", "--out", "out"], tmp_path, capsys)
    assert proc.returncode == 2 and "`dvc checkout` brings back" in proc.stderr


def real_table(name: str) -> RawData:
    """A bundled scikit-learn dataset as the csv source reads it (string class labels)."""
    from sklearn import datasets

    from nnops.ingest import from_table

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    table = bunch.frame.copy()
    table["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return from_table(table, "target", (), where=name)


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "digits"])
def test_default_params_pass_clean_real_data(tmp_path: Path, name: str):
    from nnops.ingest import load_digits

    raw = load_digits() if name == "digits" else real_table(name)
    report = check(tmp_path, raw)
    assert report["success"], validation_report.failure_lines(report)
    expected_method = "wasserstein" if name == "digits" else "ks"
    assert report["drift"]["method"] == expected_method
    if name == "digits":  # border pixels constant at 0 are not tested, so cannot alarm
        untested = [f for f in report["drift"]["features"] if f["drift_method"] == "none"]
        assert {f["feature"] for f in untested} >= {"px_0", "px_32", "px_39"}
        assert all(f["drift"] is None for f in untested)


def test_float_images_far_outside_the_pixel_range_are_rejected(tmp_path: Path):
    """An npz of float images (no value range of its own) is still held to 0..255."""
    from nnops.ingest import read_npz

    rng = np.random.default_rng(1)
    x_train = rng.uniform(0, 255, (400, 4, 4))
    x_train[:5, 0, 1] = 3e6
    x_test = rng.uniform(0, 255, (200, 4, 4))
    y_train, y_test = np.arange(400) % 2, np.arange(200) % 2
    np.savez(tmp_path / "f.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    report = check(tmp_path, read_npz(tmp_path / "f.npz"))
    bad = failed(report)
    assert set(bad) == {"value_max"}
    assert bad["value_max"]["column"] == "px_1" and bad["value_max"]["bound"] == "<= 255"
    assert bad["value_max"]["detail"] == (
        "split train: 5 value(s) in 3e+06..3e+06 in px_1 (allowed <= 255)"
    )
    line = validation_report.failure_lines(report)[0]
    assert "split train" in line and "3e+06" in line


def test_params_bound_a_csv_source(tmp_path: Path):
    raw = real_table("iris")
    assert "value_max" not in {e["name"] for e in check(tmp_path, raw)["expectations"]}
    bad = failed(check(tmp_path, raw, value_max=7.5))["value_max"]
    assert bad["column"] == "sepal length (cm)" and "split train" in bad["detail"]


def test_stage_writes_a_training_profile(tmp_path: Path, run_stage):
    proc = run_stage(tmp_path, clean_raw())
    assert proc.returncode == 0, proc.stderr
    profile = json.loads((tmp_path / "out/profile.json").read_text())
    assert profile["format"] == data_profile.PROFILE_FORMAT
    assert profile["feature_names"] == [f"px_{i}" for i in range(9)]
    assert profile["class_names"] == ["0", "1", "2"] and profile["value_bounds"] == [0, 16]
    assert profile["n_reference"] == 2550 and profile["validate"]["drift_alpha"] == 0.01
    px = profile["features"]["px_0"]
    assert px["n"] == 2550 and len(px["sketch"]) == drift.SKETCH_POINTS
    assert min(px["sketch"]) >= 0 and max(px["sketch"]) <= 16 and px["std"] > 0


def test_a_row_number_or_id_column_is_refused_as_a_feature(tmp_path: Path):
    from sklearn.datasets import load_wine

    from nnops.ingest import from_table

    bunch = load_wine(as_frame=True)
    table = bunch.frame.sort_values("target").reset_index(drop=True)
    n = len(table)
    rng = np.random.default_rng(0)
    table.insert(0, "Unnamed: 0", np.arange(n))  # the index to_csv() writes, sorted by label
    table["sample"] = rng.permutation(n) + 1  # a shuffled row number 1..n
    table["customer_id"] = rng.choice(10 * n, n, replace=False)  # ids with gaps: by name
    table["visits"] = rng.integers(0, n, n)  # integers in range but repeating: a feature
    table["dose"] = rng.normal(size=n)  # distinct but not integers: a feature
    report = check(tmp_path / "a", from_table(table, "target", (), where="wine.csv"))
    entry = failed(report)["no_row_id_features"]
    flagged = {f["column"] for f in entry["failing_columns"]}
    assert flagged == {"Unnamed: 0", "sample", "customer_id"}, flagged
    line = next(x for x in validation_report.failure_lines(report) if "no_row_id" in x)
    assert "(3 columns fail)" in line and "data.exclude_columns" in line
    assert f"Unnamed: 0 (0..{n - 1})" in line and "'customer_id'" in line
    # Kept for slicing, not as features: the check passes and the rest of the data still does.
    kept = from_table(table, "target", ("Unnamed: 0", "sample", "customer_id"), where="wine.csv")
    again = check(tmp_path / "b", kept)
    assert "no_row_id_features" not in failed(again)


def test_camel_case_id_names_are_row_ids_and_words_ending_in_id_are_not(tmp_path: Path):
    """PatientId, CustomerID and userId holding distinct integers with gaps are ids by name;
    fluid, acid, humid and Squid holding the same kind of values are ordinary features."""
    from sklearn.datasets import load_wine

    from nnops.ingest import from_table

    table = load_wine(as_frame=True).frame
    n = len(table)
    rng = np.random.default_rng(1)
    ids = ("PatientId", "CustomerID", "userId")
    words = ("fluid", "acid", "humid", "Squid")
    for name in (*ids, *words):  # distinct integers, far from consecutive: only the name decides
        table[name] = rng.choice(1000 * n, n, replace=False) + 10_000
    report = check(tmp_path, from_table(table, "target", (), where="wine.csv"))
    entry = failed(report)["no_row_id_features"]
    assert {f["column"] for f in entry["failing_columns"]} == set(ids)
    line = next(x for x in validation_report.failure_lines(report) if "no_row_id" in x)
    assert "(3 columns fail)" in line and all(repr(w) not in line for w in words)


def test_values_beyond_float32_range_count_as_infinite(tmp_path: Path):
    """1e40 is finite in float64 but inf in the float32 arrays preprocess writes: refused here."""
    top = real_table("wine").frame["proline"].max() * 1e37
    with np.errstate(over="ignore"):
        assert np.isfinite(top) and np.isinf(np.float32(top))  # what preprocess would store
    report = check(tmp_path / "ok", real_table("wine"))
    assert "no_infinite_features" not in failed(report)
    big = real_table("wine")
    big.frame["proline"] = big.frame["proline"] * 1e37  # a column of ~1e40
    big.frame.loc[0, "ash"] = -np.inf
    report = check(tmp_path / "big", big)
    entry = failed(report)["no_infinite_features"]
    assert {f["column"] for f in entry["failing_columns"]} == {"proline", "ash"}
    assert {f["observed"] for f in entry["failing_columns"]} == {len(big.frame), 1}
    line = next(x for x in validation_report.failure_lines(report) if "no_infinite" in x)
    assert "beyond float32's range (|x| > 3.40282e+38)" in line
    assert "proline (178 beyond float32's range, up to 1.68e+40)" in line
    assert "ash (1 infinite)" in line, line


def test_row_id_ranges_print_large_integers_in_full(tmp_path: Path):
    """Ten-digit account ids show as 3000000017..3999999123, not as 3e+09..4e+09."""
    from sklearn.datasets import load_wine

    from nnops.ingest import from_table

    table = load_wine(as_frame=True).frame
    n = len(table)
    rng = np.random.default_rng(2)
    middle = rng.choice(999_999_105, n - 2, replace=False) + 1  # distinct, with gaps
    table["account_id"] = 3_000_000_017 + rng.permutation(np.r_[0, middle, 999_999_106])
    report = check(tmp_path, from_table(table, "target", (), where="wine.csv"))
    entry = failed(report)["no_row_id_features"]
    assert entry["detail"].startswith("account_id (3000000017..3999999123): distinct integers")
    line = next(x for x in validation_report.failure_lines(report) if "no_row_id" in x)
    assert "account_id (3000000017..3999999123)" in line and "e+09" not in line
