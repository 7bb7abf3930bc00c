"""Typed params: bad values are refused up front, naming the dotted key, value and allowed."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import merge_params
from nnops.config import ConfigError, Params, load_params, parse_params

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def merged(overrides: dict) -> dict:
    """The repository's params.yaml with ``overrides`` merged in (a nested dict replaces keys)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return merge_params(raw, copy.deepcopy(overrides))


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        parse_params(merged(raw))
    return str(err.value)


def _leaves(tree: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, (*prefix, k))]
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        return [leaf for i, v in enumerate(tree) for leaf in _leaves(v, (*prefix, i))]
    return [prefix]


REPO_RAW = yaml.safe_load((REPO / "params.yaml").read_text())
KEYS = [k for k in _leaves(REPO_RAW)]


def test_repository_params_load_and_flatten_to_dotted_names():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    flat = params.flat()
    # every leaf of params.yaml is a typed param under its dotted name, holding the file's value
    # (the file is the only source: code holds no defaults to compare with)
    assert set(flat) == {".".join(map(str, k)) for k in KEYS}
    for key in KEYS:
        value = REPO_RAW
        for part in key:
            value = value[part]
        assert flat[".".join(map(str, key))] == value, key
    assert params.validation.drift_alpha == REPO_RAW["validate"]["drift_alpha"]
    assert params.train.hidden_layers[0].units == REPO_RAW["train"]["hidden_layers"][0]["units"]


@pytest.mark.parametrize("key", KEYS, ids=[".".join(map(str, k)) for k in KEYS])
def test_every_key_missing_from_params_yaml_is_an_error(key: tuple):
    """params.yaml is the only source of values: the code holds no default to fall back on."""
    raw = copy.deepcopy(REPO_RAW)
    node = raw
    for part in key[:-1]:
        node = node[part]
    del node[key[-1]]
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert f"{'.'.join(map(str, key))}: required key is missing" in str(err.value)


@pytest.mark.parametrize("section_name", sorted(REPO_RAW))
def test_a_missing_section_is_an_error(section_name: str):
    raw = {k: v for k, v in REPO_RAW.items() if k != section_name}
    with pytest.raises(ConfigError, match=f"{section_name}: required key is missing"):
        parse_params(raw)


def test_train_stage_refuses_params_without_train_epochs(tmp_path: Path):
    """Issue 10's case: deleting train.epochs used to train with a hidden code default of 20."""
    raw = copy.deepcopy(REPO_RAW)
    del raw["train"]["epochs"]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipelines/train.py"), "--params", str(params)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "train.epochs: required key is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"l2": float("inf")}}, "train.l2: received inf; must be a finite number"),
        ({"train": {"learning_rate": float("nan")}}, "train.learning_rate: received nan"),
        ({"validate": {"value_max": float("-inf")}}, "validate.value_max: received -inf"),
        ({"split": {"seed": -1}}, "split.seed: received -1; must be greater than or equal to 0"),
        ({"train": {"seed": -1}}, "train.seed: received -1; must be greater than or equal to 0"),
        ({"train": {"seed": 2**40}}, "train.seed: received 1099511627776; must be less than"),
        ({"train": {"epochs": True}}, "train.epochs: received True; must be a valid integer"),
        ({"train": {"batch_size": "32"}}, "train.batch_size: received '32'; must be a valid int"),
        ({"train": {"l2": False}}, "train.l2: received False; must be a valid number"),
        ({"train": {"deterministic": 1}}, "train.deterministic: received 1; must be a valid bool"),
        ({"train": {"hidden_layers": []}}, "train.hidden_layers: received []; list at least one"),
        ({"trian": {"epochs": 3}}, "trian: unknown key; did you mean 'train'?"),
        ({"register": {"model_name": ""}}, "register.model_name: received ''"),
    ],
)  # fmt: skip
def test_values_that_would_crash_later_are_stopped_here(raw: dict, expected: str):
    assert expected in error_of(raw)


def test_empty_hidden_layers_only_when_explicitly_allowed():
    raw = merged({"train": {"hidden_layers": [], "allow_no_hidden_layers": True}})
    # the default tune space varies the hidden layers, which needs one to start from
    raw["tune"]["space"] = [d for d in raw["tune"]["space"] if "hidden" not in d["key"]]
    assert parse_params(raw).train.hidden_layers == ()


def test_integers_are_fine_where_floats_are_expected():
    params = parse_params(merged({"mlflow": {"connect_timeout_s": 5}, "train": {"l2": 0}}))
    assert params.mlflow.connect_timeout_s == 5.0 and params.train.l2 == 0.0


def test_params_are_frozen():
    params = parse_params(merged({}))
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


def test_keys_moved_to_the_explain_section_name_their_new_place():
    """A params.yaml from before the explain section: one line per old key, naming its new key."""
    raw = copy.deepcopy(REPO_RAW)
    explain = raw.pop("explain")
    raw["evaluate"].update(explain=explain["enabled"], explain_samples=explain["samples"])
    raw["evaluate"]["slice_by"] = explain["slice_by"]
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    lines = str(err.value).splitlines()[1:]
    assert "  evaluate.explain: moved to explain.enabled" in lines
    assert "  evaluate.explain_samples: moved to explain.samples" in lines
    assert "  evaluate.slice_by: moved to explain.slice_by" in lines
    assert "  explain: required key is missing" in lines


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
    for path in (None, "inputs/embedded.txt"):  # unset, or left at the embedded placeholder
        assert f"data.source={source!r} needs data.path (a local file) or data.url" in error_of(
            {"data": {"source": source, "path": path}}
        )
    assert parse_params(merged({"data": {"source": source, "path": "d"}})).data.path == "d"
    assert parse_params(merged({"data": {"source": source, "url": "http://x/d"}})).data.url


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
    params.write_text(yaml.safe_dump(merged({"data": {"sorce": "csv"}})))
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


def test_numbers_in_exponent_form_are_floats_as_dvc_writes_them(tmp_path: Path):
    # `dvc exp run -S train.l2=1e-05` writes `l2: 1e-05`: YAML 1.2 (DVC) reads a float, YAML 1.1
    # (PyYAML's safe_load) a string, which the strict float check would refuse.
    text = (REPO / "params.yaml").read_text()
    text = text.replace("  l2: 0.0", "  l2: 1e-05").replace(
        "learning_rate: 0.001", "learning_rate: 2E-3"
    )
    assert "l2: 1e-05" in text and "learning_rate: 2E-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.train.l2 == 1e-05 and params.train.learning_rate == 0.002
    # a quoted value is still a string, and still refused
    path.write_text(text.replace("l2: 1e-05", "l2: '1e-05'"))
    with pytest.raises(ConfigError, match="train.l2: received '1e-05'"):
        load_params(path)


def test_params_yaml_survives_the_list_edits_of_dvc_exp_run_set_param(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel; a list with its comment on the same
    line came back as unreadable YAML after `-S key=[a]` then `-S key=[]`."""
    from dvc.utils.hydra import apply_overrides

    from nnops.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    edits = [
        ["data.exclude_columns=[garden]", "explain.slice_by=[garden]"],
        ["data.exclude_columns=[]", "explain.slice_by=[]"],
        ["data.exclude_columns=[a,b]"],
        ["data.exclude_columns=[]"],
        ["evaluate.learning_curve=[0.5,1.0]"],
        ["evaluate.learning_curve=null"],
    ]
    for edit in edits:
        apply_overrides(str(path), edit)
        params = load_params(path)  # a ConfigError names the broken line
    assert params.data.exclude_columns == () and params.explain.slice_by == ()


def test_slice_columns_must_be_carried_by_data_exclude_columns():
    """preprocess carries exactly data.exclude_columns; a slice column elsewhere would only fail
    in the explain stage, after training."""
    raw = copy.deepcopy(REPO_RAW)
    raw["data"].update(source="csv", path="t.csv", exclude_columns=["region"])
    raw["explain"]["slice_by"] = ["regoin"]
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert (
        "explain.slice_by: column(s) 'regoin' not found in data.exclude_columns (available slice "
        "columns: region); did you mean 'region'?"
    ) in str(err.value)
    raw["explain"]["slice_by"] = ["region"]
    assert parse_params(raw).explain.slice_by == ("region",)


@pytest.mark.parametrize("name", ["a/b", "team:mlp", " mlp"])
def test_a_model_name_the_registry_refuses_fails_in_check_params_naming_the_key(name: str):
    """`-S register.model_name=a/b` passed check_params and failed only in register, with
    MLflow's own message, after training."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["register"]["model_name"] = name
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert f"register.model_name: received {name!r}; a registered name has no '/' or ':'" in str(
        err.value
    )
