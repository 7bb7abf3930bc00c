"""New batches checked against the training profile: nnops validate-batch and nnops predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import read_only
from nnops import data_profile, validate_batch
from nnops.config import load_params
from nnops.ingest import from_table, load_digits
from nnops.raw import RawData
from nnops.split import split_indices

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")


def iris() -> tuple[RawData, pd.DataFrame]:
    """iris as the csv source reads it, and the original table (string labels in ``target``)."""
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    table = bunch.frame.copy()
    table["target"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    return from_table(table, "target", (), where="iris"), table


def write_profile(raw: RawData, path: Path, label_column: str) -> Path:
    """The validate stage's profile of ``raw`` (same functions the stage calls)."""
    prof = data_profile.profile(raw.frame, raw.meta, PARAMS.split, PARAMS.validation)
    ref = data_profile.reference_profile(prof, PARAMS.validation, raw.meta, label_column)
    path.write_text(json.dumps(ref))
    return path


@pytest.fixture(scope="module")
def iris_case(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The iris profile, and iris's own test partition as a table (a batch from the same data)."""
    root = tmp_path_factory.mktemp("iris")
    raw, table = iris()
    profile = write_profile(raw, root / "profile.json", "target")
    s = PARAMS.split
    parts = split_indices(raw.frame["label"].to_numpy(), None, s.val_fraction, 0.3, 1)
    return profile, table.iloc[parts.test].reset_index(drop=True)


def batch_cli(*args: str) -> int:
    return validate_batch.main(list(args))


def test_clean_batch_passes_and_writes_a_report(tmp_path: Path, iris_case, capsys):
    profile, batch = iris_case
    batch.to_csv(tmp_path / "new.csv", index=False)
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv")) == 0
    out = capsys.readouterr().out
    assert "new.csv: passed (0 of 7 checks failed, 45 rows)" in out
    page = (tmp_path / "new.csv.validation.html").read_text()
    assert "Batch validation: PASSED" in page and "petal width (cm)" in page


def test_missing_column_fails_naming_it(tmp_path: Path, iris_case, capsys):
    profile, batch = iris_case
    batch.drop(columns=["petal width (cm)"]).to_csv(tmp_path / "new.csv", index=False)
    report = tmp_path / "out/report.html"
    args = ("--reference", str(profile), "--report", str(report), str(tmp_path / "new.csv"))
    assert batch_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "nnops validate-batch: FAILED schema_columns: column missing column(s) petal width (cm): "
        "observed 4 columns, bound 4 features from the profile -- the batch has the training "
        "feature columns"
    ]
    assert "Batch validation: FAILED" in report.read_text()


def test_shifted_batch_fails_on_drift_with_the_reason(tmp_path: Path, iris_case, capsys):
    profile, batch = iris_case
    shifted = batch.copy()
    for col in ("sepal length (cm)", "petal length (cm)"):
        shifted[col] += shifted[col].std()
    shifted.to_csv(tmp_path / "new.csv", index=False)
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv")) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "FAILED drift" in x]
    assert "sepal length (cm)" in line and "petal length (cm)" in line
    assert "'method': 'ks'" in line and "adjusted p" in line
    page = (tmp_path / "new.csv.validation.html").read_text()
    assert "Drift per feature" in page and "adjusted p" in page


def test_bad_cells_and_unknown_labels_are_named(tmp_path: Path, iris_case, capsys):
    profile, batch = iris_case
    bad = batch.astype({"sepal width (cm)": str})
    bad.loc[3, "sepal width (cm)"] = "wide"
    bad.loc[4, "target"] = "rose"
    bad.to_csv(tmp_path / "new.csv", index=False)
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv")) == 2
    err = capsys.readouterr().err
    assert "FAILED schema_feature_dtypes: column sepal width (cm)" in err
    assert "FAILED label_set: column target: observed ['rose']" in err


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_semicolon_or_tab_separated_batch_is_checked_like_a_comma_one(
    tmp_path: Path, iris_case, capsys, sep: str
):
    """A spreadsheet's ';' or tab CSV is read with its separator, as ingest and predict read it."""
    profile, batch = iris_case
    batch.to_csv(tmp_path / "new.csv", index=False, sep=sep)
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv")) == 0
    assert "new.csv: passed (0 of 7 checks failed, 45 rows)" in capsys.readouterr().out
    read = validate_batch.read_batch(tmp_path / "new.csv", json.loads(profile.read_text()))
    assert list(read.frame.columns) == list(batch.columns) and read.frame.shape == batch.shape
    features = batch.drop(columns=["target"])
    features.to_csv(tmp_path / "bare.csv", index=False, header=False, sep=sep)
    assert batch_cli("--reference", str(profile), "--no-header", str(tmp_path / "bare.csv")) == 0
    assert "bare.csv: passed" in capsys.readouterr().out
    # the columns are told apart: a shifted one is named by its drift
    shifted = batch.copy()
    shifted["petal length (cm)"] += 100.0
    shifted.to_csv(tmp_path / "shifted.csv", index=False, sep=sep)
    assert batch_cli("--reference", str(profile), str(tmp_path / "shifted.csv")) == 2
    assert "FAILED drift: column petal length (cm)" in capsys.readouterr().err


def test_a_gzipped_batch_is_checked_like_the_plain_one(tmp_path: Path, iris_case, capsys):
    import gzip

    profile, batch = iris_case
    plain = tmp_path / "new.csv"
    batch.to_csv(plain, index=False)
    (tmp_path / "new.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv.gz")) == 0
    assert "new.csv.gz: passed (0 of 7 checks failed, 45 rows)" in capsys.readouterr().out
    bare = batch.drop(columns=["target"]).to_csv(index=False, header=False).encode()
    (tmp_path / "bare.gz").write_bytes(gzip.compress(bare))
    assert batch_cli("--reference", str(profile), "--no-header", str(tmp_path / "bare.gz")) == 0


def test_values_beyond_float32_range_fail_as_infinite(tmp_path: Path, iris_case, capsys):
    """A batch cell of 1e40 becomes inf once cast to float32 for the model: counted as infinite."""
    profile, batch = iris_case
    bad = batch.copy()
    bad.loc[2, "sepal width (cm)"] = 1e40
    bad.loc[5, "sepal width (cm)"] = -3e39
    bad.to_csv(tmp_path / "new.csv", index=False)
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv")) == 2
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "no_infinite_features" in x)
    assert "column sepal width (cm): observed 2, bound 0" in line
    assert "no feature value is infinite, or beyond float32's range" in line
    assert "sepal width (cm) (2 beyond float32's range, up to 1e+40)" in line, line


def ingested_csv(table: pd.DataFrame, path: Path) -> Path:
    """``table`` written to ``path`` and ingested from that file as the csv source reads it, with
    the validate stage's profile beside it: (profile, csv)."""
    from nnops.ingest import read_csv

    table.to_csv(path, index=False)
    return write_profile(read_csv(path, "target"), path.with_suffix(".profile.json"), "target")


def label_set(profile: Path, batch: Path) -> dict:
    """The label check of ``batch`` against ``profile``."""
    ref = validate_batch.load_profile(profile)
    report = validate_batch.check_batch(validate_batch.read_batch(batch, ref), ref)
    return next(e for e in report["expectations"] if e["name"] == "label_set")


def float_labels(names: pd.Series) -> pd.Series:
    return pd.Series(pd.factorize(names)[0].astype(float))  # 0.0, 1.0, 2.0 -> classes 0, 1, 2


def padded_labels(names: pd.Series) -> pd.Series:
    return names + " "  # 'setosa ' -> setosa, with a warning


@pytest.mark.parametrize(
    ("labels", "unseen"), [(float_labels, 7.0), (padded_labels, "rose ")], ids=["float", "padded"]
)
def test_the_training_csv_passes_when_ingest_normalised_its_labels(
    tmp_path: Path, capsys, labels, unseen
):
    """A batch's labels are normalised as ingest normalises the training labels, so the training
    file itself passes; a label no class has still fails."""
    table = iris()[1]
    table["target"] = labels(table["target"])
    train = tmp_path / "train.csv"
    profile = ingested_csv(table, train)
    assert batch_cli("--reference", str(profile), str(train)) == 0
    assert "train.csv: passed (0 of 7 checks failed, 150 rows)" in capsys.readouterr().out
    table.iloc[:50].to_csv(tmp_path / "one.csv", index=False)  # one class (drifts: not checked)
    assert label_set(profile, tmp_path / "one.csv")["success"]
    table.loc[3, "target"] = unseen
    table.to_csv(tmp_path / "new.csv", index=False)
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv")) == 2
    assert f"FAILED label_set: column target: observed [{str(unseen)!r}]" in capsys.readouterr().err


def test_text_classes_that_look_like_numbers_are_known_in_a_batch_of_only_those(tmp_path: Path):
    """'07 ' beside 'x' is the class '07' to ingest; in a batch of '07 ' and '5.0 ' alone pandas
    reads numbers, yet they are the classes '07' and '5.0', not 7 and 5."""
    table = iris()[1]
    names = {"setosa": "07 ", "versicolor": "5.0 ", "virginica": "x"}
    table["target"] = table["target"].map(names)
    profile = ingested_csv(table, tmp_path / "train.csv")
    assert json.loads(profile.read_text())["class_names"] == ["07", "5.0", "x"]
    table.iloc[:100].to_csv(tmp_path / "numbers.csv", index=False)
    assert label_set(profile, tmp_path / "numbers.csv")["success"]
    assert batch_cli("--reference", str(profile), str(tmp_path / "train.csv")) == 0


def test_many_unseen_labels_are_cut_with_their_count(tmp_path: Path, iris_case, capsys):
    profile, batch = iris_case
    bad = batch.copy()
    bad.loc[:6, "target"] = [f"rose{i}" for i in range(7)]
    bad.to_csv(tmp_path / "new.csv", index=False)
    assert batch_cli("--reference", str(profile), str(tmp_path / "new.csv")) == 2
    assert (
        "FAILED label_set: column target: observed ['rose0', 'rose1', 'rose2', 'rose3', 'rose4', "
        "...] (7 unseen labels), bound 3 training classes"
    ) in capsys.readouterr().err


def test_a_batch_in_a_read_only_folder_keeps_its_verdict(tmp_path: Path, iris_case, capsys):
    """The report beside the batch cannot be written: the verdict is printed, then one line naming
    the report, the reason and --report; exit 2 even for a clean batch."""
    profile, batch = iris_case
    folder = tmp_path / "inbox"
    folder.mkdir()
    batch.to_csv(folder / "new.csv", index=False)
    with read_only(folder) as why:
        code = batch_cli("--reference", str(profile), str(folder / "new.csv"))
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out.strip().splitlines() == [
        f"nnops validate-batch: {folder / 'new.csv'}: passed (0 of 7 checks failed, 45 rows); "
        "no report written"
    ]
    assert captured.err.strip().splitlines() == [
        f"nnops validate-batch: error: {folder / 'new.csv.validation.html'}: cannot write the "
        f"report ({why}); write it elsewhere with --report PATH"
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["new.csv"]
    report = tmp_path / "report.html"
    assert (
        batch_cli("--reference", str(profile), "--report", str(report), str(folder / "new.csv"))
        == 0
    )
    assert "Batch validation: PASSED" in report.read_text()


def test_missing_profile_is_a_one_line_error(tmp_path: Path, capsys):
    (tmp_path / "new.csv").write_text("a\n1\n")
    assert batch_cli("--reference", str(tmp_path / "nope.json"), str(tmp_path / "new.csv")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"nnops validate-batch: error: {tmp_path / 'nope.json'}: file not found "
        "(did the previous stage run?)"
    ]


@pytest.fixture(scope="module")
def digits_case(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("digits")
    raw = load_digits()
    profile = write_profile(raw, root / "profile.json", "label")
    s = PARAMS.split
    parts = split_indices(raw.frame["label"].to_numpy(), None, s.val_fraction, s.test_fraction, 42)
    x = raw.frame[raw.meta["feature_names"]].to_numpy()[parts.test]
    return profile, x.reshape(-1, 8, 8)  # images, as a user would save them


def test_npz_batch_clean_brightened_and_misshapen(tmp_path: Path, digits_case, capsys):
    profile, images = digits_case
    cases = {"clean": images, "bright": np.clip(images + 3, 0, 16), "narrow": images[:, :, :7]}
    codes = {}
    for name, x in cases.items():
        np.savez(tmp_path / f"{name}.npz", x_raw=x)
        codes[name] = batch_cli("--reference", str(profile), str(tmp_path / f"{name}.npz"))
    assert codes == {"clean": 0, "bright": 2, "narrow": 2}
    err = capsys.readouterr().err
    assert "FAILED drift" in err and "'method': 'wasserstein'" in err and "std >" in err
    assert "56 columns per row, but the training data has 64" in err


def test_out_of_range_batch_names_the_range(tmp_path: Path, digits_case, capsys):
    profile, images = digits_case
    x = images.astype(np.float64)
    x[:2, 0, 3] = 40.0
    np.savez(tmp_path / "b.npz", x_raw=x)
    assert batch_cli("--reference", str(profile), str(tmp_path / "b.npz")) == 2
    err = capsys.readouterr().err
    assert "FAILED value_max: column px_3" in err
    assert "split batch: 2 value(s) in 40..40 in px_3 (allowed 0..16)" in err


# --- nnops predict runs the schema part first ---------------------------------------------------


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory) -> Path:
    """A tiny 4-feature, 3-class Keras model saved in the .keras format."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, "softmax")])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def predict_cli(*args: str) -> int:
    from nnops.predict import main

    return main(list(args), prog="nnops predict")


def test_predict_scores_a_clean_batch(tmp_path: Path, iris_case, iris_model):
    profile, batch = iris_case
    batch.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred.csv"
    code = predict_cli("--model", str(iris_model), "--input", str(tmp_path / "new.csv"),
                       "--out", str(out), "--reference", str(profile))  # fmt: skip
    assert code == 0 and len(pd.read_csv(out)) == len(batch)


def test_predict_refuses_a_missing_column_and_writes_nothing(
    tmp_path: Path, iris_case, iris_model, capsys
):
    profile, batch = iris_case
    batch.drop(columns=["sepal width (cm)"]).to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred.csv"
    code = predict_cli("--model", str(iris_model), "--input", str(tmp_path / "new.csv"),
                       "--out", str(out), "--reference", str(profile))  # fmt: skip
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"nnops predict: error: {tmp_path / 'new.csv'}: does not match the training data "
        f"({profile}): missing column(s) sepal width (cm)"
    ]


def test_predict_warns_on_drift_or_refuses_when_asked(
    tmp_path: Path, iris_case, iris_model, capsys
):
    profile, batch = iris_case
    shifted = batch.copy()
    shifted["petal length (cm)"] += 2 * shifted["petal length (cm)"].std()
    shifted.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred.csv"
    args = ["--model", str(iris_model), "--input", str(tmp_path / "new.csv"), "--out", str(out),
            "--reference", str(profile)]  # fmt: skip
    assert predict_cli(*args) == 0 and out.exists()
    assert "new.csv: drift: petal length (cm): observed" in capsys.readouterr().err
    out.unlink()
    assert predict_cli(*args, "--refuse-drift") == 2 and not out.exists()
    assert "(refused: drift, see nnops validate-batch)" in capsys.readouterr().err


def test_predict_with_the_profile_ignores_extra_columns_as_the_model_does(
    tmp_path: Path, iris_case, capsys
):
    """An id or a note column beside the features was refused as 'unknown column(s)' whenever
    the workspace's profile applied, though predict says extra columns are ignored."""
    import keras

    from nnops.predict import main as predict

    profile, batch = iris_case
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "iris.keras")
    noted = batch.assign(note="checked", row_id=range(len(batch)))
    noted.to_csv(tmp_path / "noted.csv", index=False)
    batch.to_csv(tmp_path / "plain.csv", index=False)
    for name in ("plain", "noted"):
        args = ["--model", str(tmp_path / "iris.keras"), "--reference", str(profile)]
        assert predict([*args, "--input", str(tmp_path / f"{name}.csv"), "--out",
                        str(tmp_path / f"{name}.out")]) == 0  # fmt: skip
    assert (tmp_path / "noted.out").read_text() == (tmp_path / "plain.out").read_text()
    assert "ignoring column(s) the model does not take: note, row_id" in capsys.readouterr().err
    # a missing feature is still refused
    batch.drop(columns=[batch.columns[0]]).to_csv(tmp_path / "short.csv", index=False)
    args = ["--model", str(tmp_path / "iris.keras"), "--reference", str(profile)]
    assert predict([*args, "--input", str(tmp_path / "short.csv"), "--out", "x.csv"]) == 2
    assert "missing column(s)" in capsys.readouterr().err
