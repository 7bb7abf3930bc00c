"""preprocess: splits, scaling fitted on train only, arrays that load without pickle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, section
from nnops import preprocess
from nnops.errors import NnopsError
from nnops.ingest import from_arrays, from_table

pytestmark = pytest.mark.unit


def pixel_raw():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, (300, 2, 2), dtype=np.uint8)
    return from_arrays("digits", x, np.arange(300) % 3, value_range=(0.0, 16.0))


def csv_raw():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "a": rng.normal(10, 2, 400),
            "b": rng.normal(-5, 0.1, 400),
            "const": np.full(400, 7.0),
            "kind": np.resize(["x", "y"], 400),
            "city": np.resize(["Oslo", "Lima", None, "Pune"], 400),
        }
    )
    return from_table(table, "kind", ["city"])


def test_pixels_are_rescaled_by_the_source_range():
    raw = pixel_raw()
    arrays, spec = preprocess.make_splits(raw.frame, raw.meta, section("split"), "auto")
    assert spec == {"method": "rescale", "scale": 1 / 16, "offset": 0.0}
    for split in arrays.values():
        assert split["x"].dtype == np.float32 and split["x_raw"].dtype == np.float32
        np.testing.assert_array_equal(split["x"], split["x_raw"] / 16)
        assert split["y"].dtype == np.int64
    assert max(a["x"].max() for a in arrays.values()) == 1.0


def test_csv_is_standardised_with_train_statistics_only():
    raw = csv_raw()
    frame = raw.frame.copy()
    arrays, spec = preprocess.make_splits(frame, raw.meta, section("split"), "auto", ["city"])
    assert spec["method"] == "standardize"
    train = arrays["train"]["x_raw"].astype(np.float64)
    np.testing.assert_allclose(spec["mean"], train.mean(axis=0), rtol=1e-6)
    assert spec["mean"][0] != pytest.approx(frame["a"].mean(), abs=1e-9)  # not all rows
    assert spec["variance"][2] == 1.0  # the constant feature maps to 0, not inf
    np.testing.assert_allclose(arrays["train"]["x"][:, :2].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(arrays["train"]["x"][:, :2].std(axis=0), 1, atol=1e-4)
    assert np.all(arrays["test"]["x"][:, 2] == 0)


def test_explicit_methods():
    raw = csv_raw()
    _, none = preprocess.make_splits(raw.frame, raw.meta, section("split"), "none")
    assert none == {"method": "none", "scale": 1.0, "offset": 0.0}
    arrays, spec = preprocess.make_splits(raw.frame, raw.meta, section("split"), "rescale")
    x = arrays["train"]["x_raw"]
    assert spec["scale"] == pytest.approx(1 / (x.max() - x.min()))
    assert arrays["train"]["x"].min() == pytest.approx(0) and arrays["train"]["x"].max() == 1


def test_rescale_of_an_empty_range_is_refused():
    with pytest.raises(NnopsError, match=r"value range \[3.0, 3.0\] is empty"):
        preprocess.fit_scaling("rescale", np.full((4, 2), 3.0, dtype=np.float32))


def test_splits_are_stratified_and_the_source_test_split_is_kept():
    rng = np.random.default_rng(1)
    raw = from_arrays(
        "npz", rng.integers(0, 256, (200, 3, 3)), np.arange(200) % 4,
        rng.integers(0, 256, (40, 3, 3)), np.arange(40) % 4, value_range=(0.0, 255.0),
    )  # fmt: skip
    arrays, _ = preprocess.make_splits(
        raw.frame, raw.meta, section("split", val_fraction=0.2), "auto"
    )
    np.testing.assert_array_equal(
        arrays["test"]["x_raw"], raw.frame.iloc[200:, :9].to_numpy(np.float32)
    )
    assert [len(arrays[s]["y"]) for s in ("train", "val", "test")] == [160, 40, 40]
    assert np.bincount(arrays["val"]["y"]).tolist() == [10, 10, 10, 10]


def test_written_arrays_load_without_pickle_and_hash_is_stable(tmp_path: Path):
    raw = csv_raw()
    arrays, spec = preprocess.make_splits(raw.frame, raw.meta, section("split"), "auto", ["city"])
    meta = preprocess.processed_meta(raw.meta, arrays, spec, ["city"])
    preprocess.write_processed(tmp_path, arrays, spec, meta)
    for name in ("train", "val", "test"):
        with np.load(tmp_path / f"{name}.npz", allow_pickle=False) as npz:
            assert set(npz.files) == {"x_raw", "x", "y", "slice__city"}
            assert npz["slice__city"].dtype.kind == "U"
            np.testing.assert_array_equal(npz["x"], arrays[name]["x"])
    assert "(missing)" in set(arrays["train"]["slice__city"])
    saved = json.loads((tmp_path / "meta.json").read_text())
    assert saved["splits"] == {"train": 289, "val": 51, "test": 60}
    assert saved["slice_columns"] == ["city"] and saved["class_names"] == ["x", "y"]
    assert json.loads((tmp_path / "preprocessing.json").read_text())["method"] == "standardize"
    again, _ = preprocess.make_splits(raw.frame, raw.meta, section("split"), "auto", ["city"])
    assert preprocess.data_hash(again) == saved["data_hash"]
    again["val"]["y"][0] += 1
    assert preprocess.data_hash(again) != saved["data_hash"]


def test_unknown_slice_column_is_named():
    raw = csv_raw()
    with pytest.raises(NnopsError, match=r"names \['town'\]"):
        preprocess.make_splits(raw.frame, raw.meta, section("split"), "auto", ["town"])


def test_refuses_failed_or_stale_validation():
    meta = {"content_hash": "abc"}
    with pytest.raises(NnopsError, match="failed validation"):
        preprocess.check_validation({"success": False, "content_hash": "abc"}, meta, "v.json")
    with pytest.raises(NnopsError, match="rerun validate"):
        preprocess.check_validation({"success": True, "content_hash": "old"}, meta, "v.json")
    preprocess.check_validation({"success": True, "content_hash": "abc"}, meta, "v.json")


def test_a_class_only_in_the_test_split_is_reported_with_a_warning(tmp_path: Path):
    """A source whose own test split holds a class its training split lacks."""
    rng = np.random.default_rng(0)
    raw = from_arrays(
        "npz", rng.integers(0, 256, (60, 3, 3)), np.arange(60) % 2,
        rng.integers(0, 256, (12, 3, 3)), np.arange(12) % 3, value_range=(0.0, 255.0),
    )  # fmt: skip
    arrays, spec = preprocess.make_splits(raw.frame, raw.meta, section("split"), "auto")
    assert preprocess.test_only_classes(arrays, raw.meta["class_names"]) == {"2": 4}
    meta = preprocess.processed_meta(raw.meta, arrays, spec, [])
    assert meta["test_only_classes"] == {"2": 4}
    # The stage says so (a warning line naming the class), and still writes its outputs.
    from nnops.io import write_json
    from nnops.raw import write_raw

    write_raw(raw, tmp_path / "raw")
    write_json(tmp_path / "val/validation.json", {"success": True,
               "content_hash": raw.meta["content_hash"]})  # fmt: skip
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines/preprocess.py"), "--raw", "raw",
         "--validation", "val", "--out", "out"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "class '2' has 4 test row(s) but no training rows" in proc.stderr
