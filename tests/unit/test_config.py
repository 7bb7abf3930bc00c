"""Typed params: bad values are refused up front, naming the dotted key, value and allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nnops.config import ConfigError, Params, load_params, parse_params

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def error_of(raw: object) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("validate"), dict):  # required keys filled in
        base = yaml.safe_load((REPO / "params.yaml").read_text())["validate"]
        raw = {**raw, "validate": {**base, **raw["validate"]}}
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    return str(err.value)


def test_repository_params_load_and_flatten_to_dotted_names():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    flat = params.flat()
    assert flat["data.source"] == params.data.source
    assert flat["validate.drift_alpha"] == params.validate_.drift_alpha
    assert flat["train.hidden_layers.0.units"] == params.train.hidden_layers[0].units
    # every leaf of params.yaml is a typed param, and the file sets every one of them
    file_leaves = Params.model_validate(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert set(file_leaves.flat()) == set(flat)


def test_params_are_frozen():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ValueError):
        params.data.source = "csv"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"sorce": "csv"}}, "data.sorce: unknown key; did you mean 'data.source'?"),
        ({"trian": {"epochs": 3}}, "trian: unknown key; did you mean 'train'?"),
        (
            {"train": {"early_stopping": {"patiance": 3}}},
            "train.early_stopping.patiance: unknown key; did you mean "
            "'train.early_stopping.patience'?",
        ),
        ({"validate": {"drift_alfa": 0.2}}, "did you mean 'validate.drift_alpha'?"),
    ],
)
def test_unknown_key_suggests_the_closest(raw: dict, expected: str):
    assert expected in error_of(raw)


def test_unknown_key_lists_the_allowed_keys():
    message = error_of({"split": {"sed": 1}})
    assert "allowed here: seed, test_fraction, val_fraction" in message


def test_unknown_key_far_from_any_gives_no_suggestion():
    message = error_of({"data": {"zzzzzz": 1}})
    assert "data.zzzzzz: unknown key" in message and "did you mean" not in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"epochs": "five"}}, "train.epochs: received 'five'; must be a valid integer"),
        ({"train": {"epochs": 2.5}}, "train.epochs: received 2.5; must be a valid integer"),
        ({"train": {"deterministic": "maybe"}}, "train.deterministic: received 'maybe'"),
        ({"validate": {"drift_alpha": "high"}}, "validate.drift_alpha: received 'high'"),
        ({"data": {"exclude_columns": "city"}}, "data.exclude_columns: received 'city'; "
                                                "must be a list"),
        ({"data": None}, "data: received None; must be a mapping"),
        ({"train": {"hidden_layers": [{"unit": 3}]}},
         "train.hidden_layers.0.units: required key is missing"),
    ],
)  # fmt: skip
def test_wrong_type_names_key_and_value(raw: dict, expected: str):
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"split": {"val_fraction": 1.5}}, "split.val_fraction: received 1.5; must be less than 1"),
        ({"train": {"epochs": 0}}, "train.epochs: received 0; must be greater than 0"),
        ({"train": {"hidden_layers": [{"units": -3}]}},
         "train.hidden_layers.0.units: received -3; must be greater than 0"),
        ({"validate": {"max_duplicate_fraction": 2}},
         "validate.max_duplicate_fraction: received 2; must be less than or equal to 1"),
        ({"validate": {"value_min": 5, "value_max": 1}},
         "validate.value_min must be below validate.value_max; received 5.0 >= 1.0"),
        ({"validate": {"min_class_fraction": 0.95}},
         "validate.min_class_fraction must not exceed validate.max_class_fraction"),
        ({"split": {"val_fraction": 0.5, "test_fraction": 0.45}},
         "split.val_fraction + split.test_fraction must be below 0.9"),
    ],
)  # fmt: skip
def test_out_of_range_names_key_value_and_bound(raw: dict, expected: str):
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    ("raw", "key", "allowed"),
    [
        ({"data": {"source": "mnits"}}, "data.source: received 'mnits'",
         "'digits', 'mnist', 'fashion_mnist', 'npz' or 'csv'"),
        ({"preprocess": {"scaling": "minmax"}}, "preprocess.scaling: received 'minmax'",
         "'auto', 'rescale', 'standardize' or 'none'"),
        ({"train": {"optimizer": "adamm"}}, "train.optimizer: received 'adamm'", "'adam'"),
    ],
)  # fmt: skip
def test_bad_literal_lists_the_choices(raw: dict, key: str, allowed: str):
    message = error_of(raw)
    assert key in message and f"allowed: {allowed}" in message


@pytest.mark.parametrize("source", ["csv", "npz"])
def test_local_source_without_path_or_url(source: str):
    assert f"data.source={source!r} needs data.path (a local file) or data.url" in error_of(
        {"data": {"source": source}}
    )
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    assert parse_params({**base, "data": {"source": source, "path": "d"}}).data.path == "d"
    assert parse_params({**base, "data": {"source": source, "url": "http://x/d"}}).data.url


def test_every_error_is_reported_at_once():
    message = error_of({"train": {"epochs": 0, "batch_size": "big"}, "data": {"sorce": 1}})
    assert "train.epochs" in message and "train.batch_size" in message
    assert "data.sorce" in message


def test_file_level_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read params file"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected a mapping at the top level"):
        load_params(bad)


HEAVY = ("tensorflow", "keras", "great_expectations", "mlflow", "sklearn", "pandas")


@pytest.mark.parametrize("stage", ["ingest", "validate", "preprocess"])
def test_stage_with_bad_params_exits_2_before_heavy_imports(tmp_path: Path, stage: str):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  sorce: csv\n")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / f"pipelines/{stage}.py"),
         "--params", str(params)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert errors[0] == f"{stage}: error: {params}: invalid params"
    assert "data.sorce: unknown key; did you mean 'data.source'?" in errors[1]
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "yaml" in imported and "pydantic" in imported  # the trace is really there
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    assert list(tmp_path.iterdir()) == [params]  # nothing written
