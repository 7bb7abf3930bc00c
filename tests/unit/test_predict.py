"""Batch prediction: input checks, the prediction table, the CLI on a real model file and URI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, project_env, read_only
from nnops.errors import NnopsError
from nnops.predict import main, prediction_table
from nnops.predict_input import check_rows

pytestmark = pytest.mark.unit


def frame(rows, columns=("a", "b", "c")):
    return pd.DataFrame(rows, columns=list(columns), dtype=str)


def test_check_rows_converts_text_cells():
    x = check_rows(frame([["1", "2.5", "-3e1"]]), 3, None, "in.csv")
    assert x.dtype == np.float32 and x.tolist() == [[1.0, 2.5, -30.0]]


def test_wrong_column_count_is_named():
    with pytest.raises(NnopsError, match="in.csv: 3 columns, but the model takes 4 features"):
        check_rows(frame([["1", "2", "3"]]), 4, None, "in.csv")


@pytest.mark.parametrize(
    "cell, shown",
    [("abc", "'abc'"), ("", "''"), ("inf", "'inf'"), ("1,5", "'1,5'"), ("1e40", "'1e40'")],
)
def test_bad_cell_names_column_and_row(cell, shown):
    rows = [["1", "2", "3"], ["4", cell, "6"], ["7", "x", "9"]]
    with pytest.raises(NnopsError) as err:
        check_rows(frame(rows), 3, None, "in.csv")
    assert f"in.csv: column 'b', row 2: {shown} is not a finite number" in str(err.value)
    assert "(2 bad cell(s) in this column)" in str(err.value)


def test_header_names_pick_feature_columns_in_training_order():
    f = frame([["9", "1", "2"]], columns=("label", "f2", "f1"))
    assert check_rows(f, 2, ["f1", "f2"], "in.csv").tolist() == [[2.0, 1.0]]


def test_prediction_table_has_names_and_probabilities():
    t = prediction_table(np.array([[0.1, 0.9], [0.7, 0.3]]), ["no", "yes"])
    assert list(t.columns) == [
        "row",
        "predicted",
        "predicted_index",
        "probability",
        "p_no",
        "p_yes",
    ]
    assert t["predicted"].tolist() == ["yes", "no"]
    assert t["probability"].tolist() == [0.9, 0.7]
    with pytest.raises(NnopsError, match="3 class names for a model with 2 outputs"):
        prediction_table(np.array([[0.1, 0.9]]), ["a", "b", "c"])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny Keras model with a rescaling layer inside, saved in the .keras format."""
    import keras

    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Rescaling(0.5), keras.layers.Dense(2, "softmax")]
    )
    model.layers[-1].set_weights([np.array([[1.0, 0], [0, 1.0], [0, 0]]), np.zeros(2)])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def test_cli_scores_a_csv_with_class_names(tmp_path: Path, model_file: Path, capsys):
    (tmp_path / "rows.csv").write_text("a,b,c\n4,0,1\n0,4,1\n")
    (tmp_path / "meta.json").write_text(json.dumps({"class_names": ["left", "right"]}))
    code = main(
        [
            "--model",
            str(model_file),
            "--input",
            str(tmp_path / "rows.csv"),
            "--out",
            str(tmp_path / "out.csv"),
            "--meta",
            str(tmp_path / "meta.json"),
        ]
    )
    assert code == 0
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["predicted"].tolist() == ["left", "right"]
    expected = np.exp([2, 0]) / np.exp([2, 0]).sum()  # softmax of rescaled rows
    assert out.loc[0, ["p_left", "p_right"]].to_numpy(float) == pytest.approx(expected, rel=1e-5)
    assert "2 rows" in capsys.readouterr().out


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_semicolon_or_tab_separated_batch_is_scored_like_a_comma_one(
    tmp_path: Path, model_file: Path, sep: str
):
    (tmp_path / "rows.csv").write_text("a,b,c\n4,0,1\n0,4,1\n")
    (tmp_path / "semi.csv").write_text(f"a{sep}b{sep}c\n4{sep}0{sep}1\n0{sep}4{sep}1\n")
    for name in ("rows", "semi"):
        args = ["--model", str(model_file), "--input", str(tmp_path / f"{name}.csv")]
        assert main([*args, "--out", str(tmp_path / f"{name}.out.csv")]) == 0
    assert (tmp_path / "semi.out.csv").read_text() == (tmp_path / "rows.out.csv").read_text()


def test_a_gzipped_batch_is_scored_like_the_plain_one(tmp_path: Path, model_file: Path):
    import gzip

    (tmp_path / "rows.csv").write_text("a,b,c\n4,0,1\n0,4,1\n")
    (tmp_path / "rows.csv.gz").write_bytes(gzip.compress((tmp_path / "rows.csv").read_bytes()))
    (tmp_path / "bare.gz").write_bytes(gzip.compress(b"4,0,1\n0,4,1\n"))
    for name in ("rows.csv", "rows.csv.gz"):
        args = ["--model", str(model_file), "--input", str(tmp_path / name)]
        assert main([*args, "--out", str(tmp_path / f"{name}.out")]) == 0
    assert (tmp_path / "rows.csv.gz.out").read_text() == (tmp_path / "rows.csv.out").read_text()
    from nnops.predict_input import read_rows

    assert read_rows(tmp_path / "bare.gz", 3, header=False).tolist() == [[4, 0, 1], [0, 4, 1]]


@pytest.mark.parametrize("sep", [",", ";"])
def test_a_csv_with_a_utf8_bom_is_scored_like_one_without(
    tmp_path: Path, model_file: Path, sep: str
):
    """Excel's "CSV UTF-8" starts with a byte-order mark; the first column keeps its name."""
    from sklearn.datasets import load_iris

    rows = load_iris(as_frame=True).frame.iloc[::10, [3, 0, 1, 2]]  # label-free, shuffled order
    rows.columns = ["petal_width_cm", "sepal_length_cm", "sepal_width_cm", "petal_length_cm"]
    rows.to_csv(tmp_path / "plain.csv", index=False, sep=sep)
    rows.to_csv(tmp_path / "bom.csv", index=False, sep=sep, encoding="utf-8-sig")
    assert (tmp_path / "bom.csv").read_bytes().startswith(b"\xef\xbb\xbfpetal_width_cm")
    # the model's three features by name: the BOM'd first column must match its name
    names = ["sepal_length_cm", "sepal_width_cm", "petal_width_cm"]
    (tmp_path / "meta.json").write_text(json.dumps({"feature_names": names}))
    for name in ("plain", "bom"):
        args = ["--model", str(model_file), "--input", str(tmp_path / f"{name}.csv")]
        args += ["--meta", str(tmp_path / "meta.json")]
        assert main([*args, "--out", str(tmp_path / f"{name}.out.csv")]) == 0
    assert (tmp_path / "bom.out.csv").read_text() == (tmp_path / "plain.out.csv").read_text()
    # without a header the BOM is not part of the first cell either
    from nnops.predict_input import read_rows

    rows.iloc[:, :3].to_csv(
        tmp_path / "bare.csv", index=False, header=False, sep=sep, encoding="utf-8-sig"
    )
    x = read_rows(tmp_path / "bare.csv", 3, header=False)
    assert x.tolist() == rows.iloc[:, :3].to_numpy(np.float32).tolist()


def test_cli_scores_npz_and_headerless_csv(tmp_path: Path, model_file: Path):
    np.savez(tmp_path / "rows.npz", x_raw=np.array([[0, 4, 0]], dtype=np.float32))
    assert (
        main(
            [
                "--model",
                str(model_file),
                "--input",
                str(tmp_path / "rows.npz"),
                "--out",
                str(tmp_path / "a.csv"),
            ]
        )
        == 0
    )
    assert pd.read_csv(tmp_path / "a.csv")["predicted"].tolist() == [1]
    (tmp_path / "rows.csv").write_text("4,0,0\n")
    assert (
        main(
            [
                "--model",
                str(model_file),
                "--input",
                str(tmp_path / "rows.csv"),
                "--out",
                str(tmp_path / "b.csv"),
                "--no-header",
            ]
        )
        == 0
    )
    assert pd.read_csv(tmp_path / "b.csv")["p_0"].iloc[0] > 0.5


def test_console_script_rejects_bad_input_with_exit_2(tmp_path: Path, model_file: Path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    (tmp_path / "out.csv").write_text("previous predictions\n")
    proc = subprocess.run(
        [
            str(BIN / "nnops-predict"),
            "--model",
            str(model_file),
            "--input",
            str(tmp_path / "bad.csv"),
            "--out",
            str(tmp_path / "out.csv"),
        ],
        capture_output=True,
        text=True,
        env=project_env(),
        timeout=300,
    )
    assert proc.returncode == 2
    assert "nnops-predict: error:" in proc.stderr
    assert "bad.csv: the header has 2 columns, but the model takes 3 features" in proc.stderr
    assert (tmp_path / "out.csv").read_text() == "previous predictions\n"  # left untouched


def test_missing_inputs_are_named(tmp_path: Path, model_file: Path, capsys):
    assert (
        main(["--model", str(tmp_path / "nope.keras"), "--input", "x.csv", "--out", "o.csv"]) == 2
    )
    assert "nope.keras: model file not found" in capsys.readouterr().err
    np.savez(tmp_path / "rows.npz", features=np.zeros((1, 3)))
    assert (
        main(
            [
                "--model",
                str(model_file),
                "--input",
                str(tmp_path / "rows.npz"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    assert "no array 'x_raw' (arrays: features)" in capsys.readouterr().err


def _log_model(client, model_file: Path, tmp_path: Path, metadata: dict | None = None):
    """Log the tiny model as the train stage logs one (a signature, no inference subprocess)."""
    import keras
    import mlflow
    from mlflow.models import infer_signature

    exp = client.create_experiment("p", artifact_location=(tmp_path / "art").as_uri())
    model = keras.saving.load_model(model_file, safe_mode=True)
    x = np.array([[4, 0, 1], [0, 4, 1]], dtype=np.float32)
    with mlflow.start_run(experiment_id=exp):
        return mlflow.keras.log_model(
            model, name="model", signature=infer_signature(x, model.predict(x, verbose=0)),
            pip_requirements=["keras"], metadata=metadata,
        )  # fmt: skip


def test_registered_model_by_alias_uses_recorded_class_names(
    tmp_path: Path, model_file: Path, mlflow_store: str
):
    import mlflow

    uri = mlflow_store
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(uri)
        info = _log_model(client, model_file, tmp_path)
        x = np.array([[4, 0, 1], [0, 4, 1]], dtype=np.float32)
        version = mlflow.register_model(info.model_uri, "m")
        client.set_model_version_tag("m", version.version, "nnops.class_names", '["L", "R"]')
        client.set_registered_model_alias("m", "champion", version.version)
        np.savez(tmp_path / "rows.npz", x_raw=x)
        code = main(
            [
                "--model",
                "models:/m@champion",
                "--tracking-uri",
                uri,
                "--input",
                str(tmp_path / "rows.npz"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        assert code == 0
        assert pd.read_csv(tmp_path / "o.csv")["predicted"].tolist() == ["L", "R"]
        (tmp_path / "wide.csv").write_text("a,b,c,d\n1,2,3,4\n")
        code = main(
            [
                "--model",
                "models:/m@champion",
                "--tracking-uri",
                uri,
                "--input",
                str(tmp_path / "wide.csv"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        assert code == 2  # the signature says 3 features
    finally:
        mlflow.set_tracking_uri(None)


def test_outside_a_project_predict_creates_no_store(tmp_path: Path):
    (tmp_path / "rows.csv").write_text("a,b,c\n1,2,3\n")
    proc = subprocess.run(
        [str(BIN / "nnops-predict"), "--input", "rows.csv", "--out", "o.csv"],
        capture_output=True, text=True, env=project_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds no params.yaml; run in the project directory, or pass --tracking-uri" in (
        proc.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]  # no ./mlflow.db


def test_a_missing_embedded_store_is_not_created(tmp_path: Path, capsys):
    (tmp_path / "rows.csv").write_text("a,b,c\n1,2,3\n")
    uri = f"sqlite:///{tmp_path / 'nowhere.db'}"
    args = ["--model", "models:/m@champion", "--tracking-uri", uri]
    assert main([*args, "--input", str(tmp_path / "rows.csv"), "--out", "o.csv"]) == 2
    assert "nowhere.db: no MLflow store there" in capsys.readouterr().err
    assert not (tmp_path / "nowhere.db").exists()


def _predict(model_file: Path, rows: Path, out: Path) -> int:
    return main(["--model", str(model_file), "--input", str(rows), "--out", str(out)])


def test_a_duplicated_header_is_refused_naming_the_column(tmp_path, model_file, capsys):
    (tmp_path / "rows.csv").write_text("a,b,a\n1,2,3\n")
    assert _predict(model_file, tmp_path / "rows.csv", tmp_path / "o.csv") == 2
    assert "rows.csv: column 'a' appears more than once in the header" in capsys.readouterr().err


def test_directory_missing_and_symlink_loop_inputs_are_told_apart(tmp_path, model_file, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    seen = []
    for name in ("folder", "absent.csv", "loop.csv"):
        assert _predict(model_file, tmp_path / name, tmp_path / "o.csv") == 2
        seen.append(capsys.readouterr().err)
    assert "folder: is a directory" in seen[0]
    assert "absent.csv: not found" in seen[1]
    assert "loop.csv: symlink loop" in seen[2]


def test_out_pointing_at_a_directory_is_a_clear_error(tmp_path, model_file, capsys):
    (tmp_path / "rows.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "out").mkdir()
    assert _predict(model_file, tmp_path / "rows.csv", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "out: is a directory; --out takes the predictions CSV file to write" in err
    assert "Traceback" not in err


def test_a_wide_file_is_refused_from_its_header(tmp_path, model_file, capsys):
    wide = tmp_path / "wide.csv"
    n = 200_000
    wide.write_text(",".join(f"c{i}" for i in range(n)) + "\n" + ",".join(["1"] * n) + "\n")
    assert _predict(model_file, wide, tmp_path / "o.csv") == 2
    assert f"wide.csv: the header has {n} columns, but the model takes 3" in (
        capsys.readouterr().err
    )


def test_bad_cells_are_named_by_their_row_in_the_file_across_chunks(tmp_path, monkeypatch):
    import nnops.predict_input as pr

    monkeypatch.setattr(pr, "CHUNK_CELLS", 6)  # two rows of three cells per chunk
    rows = ["a,b,c"] + [f"{i},{i},{i}" for i in range(1, 8)] + ["8,oops,8"]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(NnopsError, match=r"column 'b', row 8: 'oops'"):
        pr.read_rows(tmp_path / "rows.csv", 3)
    (tmp_path / "ok.csv").write_text("\n".join(rows[:-1]) + "\n")
    x = pr.read_rows(tmp_path / "ok.csv", 3)
    assert x.shape == (7, 3) and x[:, 0].tolist() == list(range(1, 8))


MEASURE = """
import sys
import numpy as np
from nnops.predict_input import read_rows

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

read_rows(sys.argv[2], 20)  # warm up: imports, parser set-up
before = hwm()
x = read_rows(sys.argv[1], 20)
print((hwm() - before) / int(sys.argv[3]), x.shape[0])
"""


def test_csv_prediction_memory_stays_within_a_few_times_the_file_size(tmp_path: Path):
    rng = np.random.default_rng(0)
    big = tmp_path / "big.csv"
    frame = pd.DataFrame(rng.random((10_000, 20)).round(5), columns=[f"f{i}" for i in range(20)])
    block = frame.to_csv(index=False, header=False)  # 200,000 rows: this block 20 times over
    big.write_text(",".join(frame.columns) + "\n" + block * 20)
    frame.head(50).to_csv(tmp_path / "small.csv", index=False)
    size = big.stat().st_size
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(big), str(tmp_path / "small.csv"), str(size)],
        capture_output=True, text=True, env=project_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ratio, rows = proc.stdout.split()
    assert int(rows) == 200_000
    assert float(ratio) < 3.0, f"peak memory grew by {float(ratio):.1f}x the file size"


def test_a_model_with_recorded_columns_refuses_a_header_that_lacks_one(
    tmp_path: Path, model_file: Path, mlflow_store: str, capsys
):
    """Outside a project (no training profile), a header without the model's own names used to
    be scored by position: wrong predictions, exit 0. Reordered columns are still fine."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_store)
    try:
        client = mlflow.MlflowClient(mlflow_store)
        info = _log_model(client, model_file, tmp_path, {"feature_names": ["f1", "f2", "f3"]})
    finally:
        mlflow.set_tracking_uri(None)
    args = ["--model", info.model_uri, "--tracking-uri", mlflow_store, "--reference", "none"]

    def score(text: str, *extra: str) -> int:
        (tmp_path / "rows.csv").write_text(text)
        return main([*args, *extra, "--input", str(tmp_path / "rows.csv"), "--out",
                     str(tmp_path / "o.csv")])  # fmt: skip

    assert score("f1,f2,f3\n4,0,1\n0,4,1\n") == 0
    ordered = (tmp_path / "o.csv").read_text()
    assert score("label,f3,f2,f1\nx,1,0,4\ny,1,4,0\n") == 0  # by name, extra columns ignored
    assert (tmp_path / "o.csv").read_text() == ordered
    capsys.readouterr()
    assert score("f3,f2,F1\n1,0,4\n1,4,0\n") == 2
    err = capsys.readouterr().err
    assert "rows.csv: the header lacks 1 of the model's 3 feature columns: 'f1'; it has 'F1' " in (
        err
    )
    assert "The model picks its columns by name" in err
    assert (tmp_path / "o.csv").read_text() == ordered  # the earlier output is untouched
    assert score("a,b,c\n1,0,4\n") == 2
    assert "lacks 3 of the model's 3 feature columns: 'f1', 'f2', 'f3'; it has 'a', 'b', 'c'" in (
        capsys.readouterr().err
    )
    assert score("4,0,1\n0,4,1\n", "--no-header") == 0  # no header: the model's order, by position
    assert (tmp_path / "o.csv").read_text() == ordered


def test_out_must_not_be_the_input_and_its_folder_must_be_writable(
    tmp_path: Path, model_file: Path, capsys
):

    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c\n4,0,1\n")
    assert _predict(model_file, rows, rows) == 2
    assert "rows.csv: --out is the input file; write the predictions to another file" in (
        capsys.readouterr().err
    )
    assert rows.read_text() == "a,b,c\n4,0,1\n"
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked) as why:
        assert _predict(model_file, rows, locked / "o.csv") == 2
    err = capsys.readouterr().err
    assert (
        f"locked: cannot write there ({why}); nnops predict writes the predictions (--out)" in err
    )
    assert "Traceback" not in err


def test_the_workspace_model_takes_its_class_names_from_the_processed_data(
    tmp_path: Path, model_file: Path, monkeypatch, capsys
):
    import shutil

    (tmp_path / "models").mkdir()
    shutil.copy(model_file, tmp_path / "models" / "model.keras")
    (tmp_path / "data" / "processed").mkdir(parents=True)
    meta = {"class_names": ["left", "right"], "feature_names": ["a", "b", "c"]}
    (tmp_path / "data" / "processed" / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "rows.csv").write_text("c,b,a\n1,0,4\n1,4,0\n")
    monkeypatch.chdir(tmp_path)
    assert _predict(Path("models/model.keras"), Path("rows.csv"), Path("o.csv")) == 0
    assert pd.read_csv("o.csv")["predicted"].tolist() == ["left", "right"]
    shutil.copy(model_file, tmp_path / "elsewhere.keras")  # another model file: no default
    assert _predict(Path("elsewhere.keras"), Path("rows.csv"), Path("o.csv")) == 0
    assert pd.read_csv("o.csv")["predicted"].tolist() == [0, 1]


def test_the_separator_notice_is_given_once_per_file(tmp_path: Path, model_file: Path, capsys):
    (tmp_path / "semi.csv").write_text("a;b;c\n4;0;1\n0;4;1\n")
    for _ in range(2):  # the header is read more than once: the notice comes once
        assert _predict(model_file, tmp_path / "semi.csv", tmp_path / "o.csv") == 0
    err = capsys.readouterr().err
    assert err.count("reading it as ';'-separated") == 1, err
    assert "nnops.csv: " in err and "nnops.ingest" not in err
