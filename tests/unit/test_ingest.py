"""ingest: each source becomes the raw table of the contract; bad inputs name what is wrong."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import section
from nnops import fetch, ingest
from nnops.config import ConfigError
from nnops.errors import NnopsError
from nnops.raw import read_raw, write_raw
from nnops.secrets import basic_auth

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "great_expectations", "mlflow")


def write_csv(path: Path, rows: int = 12) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "height": rng.normal(170, 10, rows).round(1),
            "weight": rng.integers(50, 90, rows),
            "city": np.resize(["Oslo", "Lima", "Pune"], rows),
            "species": np.resize(["owl", "cat", "bee"], rows),
        }
    )
    frame.to_csv(path, index=False)
    return path


def write_npz(path: Path, drop: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 4, 4), dtype=np.uint8),
        "y_train": np.arange(20) % 3,
        "x_test": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "y_test": np.arange(6) % 3,
    }
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_directory(
    root: Path, handler_class: type, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Serve ``root`` with ``handler_class`` on a free 127.0.0.1 port; yield ``host:port``."""
    for name in ("no_proxy", "NO_PROXY"):  # a CI proxy must not intercept 127.0.0.1
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    handler = functools.partial(handler_class, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a temporary directory."""
    root = tmp_path / "served"
    root.mkdir()
    with serve_directory(root, QuietHandler, monkeypatch) as host:
        yield f"http://{host}", root


# ---------------------------------------------------------------- sources


def test_digits_is_the_bundled_8x8_set_with_its_pixel_range():
    raw = ingest.load(section("data"))
    assert raw.frame.shape == (1797, 64 + 2)
    assert list(raw.frame.columns[:2]) == ["px_0", "px_1"]
    assert raw.frame["px_0"].dtype == np.uint8 and raw.frame["label"].dtype == np.int64
    assert set(raw.frame["origin"]) == {"train"}
    meta = raw.meta
    assert meta["image_shape"] == [8, 8] and meta["value_range"] == [0, 16]
    assert meta["class_names"] == [str(i) for i in range(10)] and not meta["has_test_split"]
    assert raw.frame.iloc[:, :64].to_numpy().max() == 16


def test_npz_keeps_its_test_split(tmp_path: Path):
    raw = ingest.read_npz(write_npz(tmp_path / "d.npz"))
    assert raw.frame.shape == (26, 16 + 2)
    assert (raw.frame["origin"] == "test").sum() == 6
    assert raw.meta["has_test_split"] and raw.meta["image_shape"] == [4, 4]
    assert raw.meta["value_range"] == [0, 255]
    assert raw.meta["feature_names"][-1] == "px_15"


def test_npz_missing_key_names_the_key_and_file(tmp_path: Path):
    path = write_npz(tmp_path / "d.npz", drop="y_test")
    with pytest.raises(NnopsError, match=r"d\.npz: no array 'y_test'"):
        ingest.read_npz(path)


def test_npz_missing_file_names_the_file(tmp_path: Path):
    with pytest.raises(NnopsError, match=r"nothere\.npz: not found; expected an npz file"):
        ingest.read_npz(tmp_path / "nothere.npz")


def test_csv_maps_string_labels_and_keeps_excluded_columns(tmp_path: Path):
    raw = ingest.read_csv(write_csv(tmp_path / "d.csv"), "species", ["city"])
    assert list(raw.frame.columns) == ["height", "weight", "label", "origin", "city"]
    assert raw.meta["class_names"] == ["bee", "cat", "owl"]
    assert raw.meta["label_mapping"] == {"bee": 0, "cat": 1, "owl": 2}
    assert raw.frame["label"].tolist()[:3] == [2, 1, 0]  # owl, cat, bee
    assert raw.frame["city"].tolist()[:2] == ["Oslo", "Lima"]
    assert raw.meta["feature_names"] == ["height", "weight"]
    assert raw.meta["exclude_columns"] == ["city"] and raw.meta["value_range"] is None


def test_csv_integer_labels_become_class_indices_in_order(tmp_path: Path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "label": [7, 3, 7, 5]}).to_csv(path, index=False)
    raw = ingest.read_csv(path, "label")
    assert raw.meta["class_names"] == ["3", "5", "7"]
    assert raw.frame["label"].tolist() == [2, 0, 2, 1]


def test_csv_missing_label_column_names_it(tmp_path: Path):
    with pytest.raises(NnopsError, match=r"label column 'kind' \(data.label_column\) not found"):
        ingest.read_csv(write_csv(tmp_path / "d.csv"), "kind", ["city"])


def test_csv_text_feature_names_column_and_value(tmp_path: Path):
    path = write_csv(tmp_path / "d.csv")
    with pytest.raises(NnopsError) as err:
        ingest.read_csv(path, "species")  # city is text but not excluded
    assert "feature column 'city' is not numeric" in str(err.value)
    assert "'Oslo'" in str(err.value) and "d.csv" in str(err.value)


def test_csv_one_bad_cell_in_a_numeric_column_is_reported(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,x\n3,four,y\n5,6,x\n")
    with pytest.raises(
        NnopsError, match=r"column 'b' is not numeric: row 2 after the header holds 'four'"
    ):
        ingest.read_csv(path, "label")


def test_csv_missing_file_and_unknown_excluded_column(tmp_path: Path):
    with pytest.raises(NnopsError, match=r"absent\.csv: not found; expected a csv file"):
        ingest.read_csv(tmp_path / "absent.csv", "label")
    with pytest.raises(NnopsError, match=r"exclude_columns names \['town'\]"):
        ingest.read_csv(write_csv(tmp_path / "d.csv"), "species", ["town"])


def test_csv_missing_cells_pass_through_for_validate_to_catch(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,,x\n3,inf,y\n")
    frame = ingest.read_csv(path, "label").frame
    assert np.isnan(frame.loc[0, "b"]) and np.isinf(frame.loc[1, "b"])


def test_labels_that_are_not_classes_are_refused():
    with pytest.raises(NnopsError, match="holds 0.5"):
        ingest.encode_labels(pd.Series([1.0, 0.5]), "y")
    with pytest.raises(NnopsError, match="1 empty value"):
        ingest.encode_labels(pd.Series(["a", None]), "kind")


def test_exclude_columns_outside_csv_is_refused():
    with pytest.raises(NnopsError, match="applies only to data.source=csv"):
        ingest.load(section("data", source="digits", exclude_columns=("city",)))


def test_missing_text_in_a_slice_column_is_kept_and_hashed(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("a,city,label\n1,Oslo,x\n2,,y\n")
    raw = ingest.read_csv(path, "label", ["city"])
    assert raw.frame["city"].isna().tolist() == [False, True]
    assert len(raw.meta["content_hash"]) == 64


def test_content_hash_follows_the_values():
    frame = pd.DataFrame({"a": [1, 2], "label": [0, 1], "origin": ["train", "test"]})
    same = ingest.content_hash(frame.copy())
    assert ingest.content_hash(frame) == same
    changed = frame.copy()
    changed.loc[1, "origin"] = "train"
    assert ingest.content_hash(changed) != same


def test_raw_round_trip_keeps_columns_and_dtypes(tmp_path: Path):
    raw = ingest.read_csv(write_csv(tmp_path / "d.csv"), "species", ["city"])
    write_raw(raw, tmp_path / "raw")
    back = read_raw(tmp_path / "raw")
    pd.testing.assert_frame_equal(back.frame, raw.frame, check_dtype=False)
    assert back.frame["weight"].dtype == raw.frame["weight"].dtype
    assert back.meta == json.loads((tmp_path / "raw/meta.json").read_text())
    assert ingest.content_hash(back.frame) == raw.meta["content_hash"]


# ---------------------------------------------------------------- downloads


def test_url_download_is_cached_and_checked(http_root, tmp_path: Path):
    base, served = http_root
    data = write_csv(served / "people.csv")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    params = section("data",
        source="csv", url=f"{base}/people.csv", sha256=digest, label_column="species",
        exclude_columns=("city",), cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    raw = ingest.load(params)
    assert len(raw.frame) == 12 and raw.meta["class_names"] == ["bee", "cat", "owl"]
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == data.read_bytes()
    data.unlink()  # the server no longer has it: the cached copy must serve
    assert len(ingest.load(params).frame) == 12


def test_npz_download(http_root, tmp_path: Path):
    base, served = http_root
    write_npz(served / "mini.npz")
    params = section("data", source="npz", url=f"{base}/mini.npz", cache_dir=str(tmp_path / "c"))
    assert ingest.load(params).meta["has_test_split"]


def test_checksum_mismatch_keeps_nothing(http_root, tmp_path: Path):
    base, served = http_root
    write_csv(served / "people.csv")
    with pytest.raises(NnopsError, match=r"sha256 is [0-9a-f]{64}, expected 0{64}"):
        fetch.fetch(f"{base}/people.csv", tmp_path / "cache", "0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_error_names_url_and_status(http_root, tmp_path: Path):
    base, _ = http_root
    with pytest.raises(NnopsError, match=r"missing\.csv: download failed \(HTTP 404"):
        fetch.fetch(f"{base}/missing.csv", tmp_path / "cache")


# ---------------------------------------------------------------- the stage process


def run_ingest(tmp_path: Path, params_yaml: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run pipelines/ingest.py in a fresh interpreter; return it and the heavy modules loaded."""
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(yaml.safe_load(params_yaml)["data"])  # the real file, data edited
    params.write_text(yaml.safe_dump(raw))
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['ingest', '--out', {str(tmp_path / 'raw')!r}, '--params', {str(params)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(REPO / 'pipelines/ingest.py')!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
        "sys.exit(status)\n"
    )
    # Cold (NNOPS_WARM=0): the imports traced are those of the stage in this very process.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "NNOPS_WARM": "0"})  # fmt: skip
    return proc, json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_stage_writes_the_contract_without_importing_tensorflow(tmp_path: Path):
    proc, heavy = run_ingest(tmp_path, "data: {source: digits}\n")
    assert proc.returncode == 0, proc.stderr
    assert heavy == []
    meta = json.loads((tmp_path / "raw/meta.json").read_text())
    assert {"source", "n_rows", "n_features", "feature_names", "class_names", "image_shape",
            "has_test_split", "content_hash", "label_mapping"} <= set(meta)  # fmt: skip
    assert pd.read_parquet(tmp_path / "raw/data.parquet").shape == (1797, 66)


def test_stage_bad_csv_exits_2_naming_the_column(tmp_path: Path):
    csv = write_csv(tmp_path / "d.csv")
    proc, heavy = run_ingest(
        tmp_path, f"data: {{source: csv, path: {csv}, label_column: species}}\n"
    )
    assert proc.returncode == 2
    assert "ingest: error:" in proc.stderr and "'city' is not numeric" in proc.stderr
    assert heavy == [] and not (tmp_path / "raw/data.parquet").exists()


# ---------------------------------------------------------------- secrets in download sources

USER, PASSWORD, TOKEN = "bob", "s3cr@t:pw", "tok-9f8e7d"


class AuthHandler(QuietHandler):
    """Serves files only to basic auth bob/PASSWORD, a bearer TOKEN or ``?token=TOKEN``."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        auth = self.headers.get("Authorization", "")
        AuthHandler.seen.append({"auth": auth, "host": self.headers.get("Host", "")})
        ok = auth in (basic_auth(USER, PASSWORD), f"Bearer {TOKEN}")
        if not ok and self.path.endswith(f"?token={TOKEN}"):
            ok = True
            self.path = self.path.split("?", 1)[0]
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="data"')
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def auth_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 that wants credentials."""
    root = tmp_path / "served"
    root.mkdir()
    write_csv(root / "people.csv")
    AuthHandler.seen = []
    with serve_directory(root, AuthHandler, monkeypatch) as host:
        yield host, root


def csv_params(tmp_path: Path, **data: object):
    return section("data", source="csv", label_column="species", exclude_columns=("city",),
                   cache_dir=str(tmp_path / "cache"), **data)  # fmt: skip


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown(
    auth_root, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    host, _ = auth_root
    monkeypatch.setenv("PEOPLE_URL", f"http://{USER}:s3cr%40t%3Apw@{host}/people.csv?token=wrong")
    caplog.set_level("DEBUG")
    raw = ingest.load(csv_params(tmp_path, url_env="PEOPLE_URL"))
    assert len(raw.frame) == 12
    assert AuthHandler.seen[-1] == {"auth": basic_auth(USER, PASSWORD), "host": host}
    assert "s3cr" not in caplog.text and "wrong" not in caplog.text
    assert f"http://{USER}:***@{host}/people.csv?token=***" in caplog.text


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        (f"https://{USER}:{PASSWORD}@h/p.csv", "a password"),
        (f"https://{TOKEN}@h/p.csv", "a user name or token"),
        (f"https://h/p.csv?dl=1&access_token={TOKEN}", "the query value 'access_token'"),
        (f"https://b.s3.amazonaws.com/p.csv?X-Amz-Signature={TOKEN}", "'X-Amz-Signature'"),
        (f"https://a.blob.core.windows.net/c/p.csv?sv=2022&sig={TOKEN}", "the query value 'sig'"),
    ],
)
@pytest.mark.parametrize("key", ["path", "url"])
def test_a_secret_in_data_path_or_data_url_is_refused_without_showing_it(
    key: str, url: str, secret: str
):
    from nnops.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(source="csv", **{key: url})
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"data.{key}=" in message and "carries a secret (" in message and secret in message
    assert "dvc.lock records" in message and "data.url_env" in message
    assert TOKEN not in message and PASSWORD not in message


@pytest.mark.parametrize(
    ("key", "url", "hint"),
    [
        ("mlflow.tracking_uri", f"https://{USER}:{PASSWORD}@mlflow.example", "MLFLOW_TRACKING_"),
        ("tune.storage", f"postgresql+psycopg://{USER}:{PASSWORD}@db/optuna", "OPTUNA_STORAGE"),
        ("mlflow.tracking_uri", f"https://mlflow.example/#access_token={TOKEN}", "MLFLOW_"),
    ],
)
def test_no_params_key_may_hold_a_secret(key: str, url: str, hint: str):
    """check_params tracks every key, so dvc.lock would record any of them."""
    from nnops.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    section, name = key.split(".")
    raw[section][name] = url
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert f"{key}=" in message and "carries a secret" in message and hint in message
    assert PASSWORD not in message and TOKEN not in message


def test_a_url_with_a_plain_query_is_accepted(tmp_path: Path):
    params = csv_params(tmp_path, path="https://h/p.csv?dl=1&raw=true")
    assert params.path.endswith("?dl=1&raw=true")


def test_a_wrong_password_is_named_without_the_password(auth_root, tmp_path: Path):
    host, _ = auth_root
    with pytest.raises(NnopsError) as err:
        fetch.fetch(f"http://{USER}:hunter2@{host}/people.csv", tmp_path / "cache")
    message = str(err.value)
    assert "HTTP 401" in message and "data.auth_env" in message
    assert "hunter2" not in message and f"{USER}:***@{host}" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("secret", [f"{USER}:{PASSWORD}", f"Bearer {TOKEN}"])
def test_auth_env_names_the_variable_that_holds_the_secret(
    auth_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str
):
    host, _ = auth_root
    monkeypatch.setenv("PEOPLE_AUTH", secret)
    params = csv_params(tmp_path, url=f"http://{host}/people.csv", auth_env="PEOPLE_AUTH")
    assert len(ingest.load(params).frame) == 12
    monkeypatch.delenv("PEOPLE_AUTH")
    fresh = csv_params(tmp_path / "again", url=f"http://{host}/people.csv", auth_env="PEOPLE_AUTH")
    with pytest.raises(NnopsError, match="data.auth_env names the environment variable "
                                         "PEOPLE_AUTH, which is not set"):  # fmt: skip
        ingest.load(fresh)


def test_flat_params_mask_url_secrets():
    from nnops.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(source="csv", url="https://h/p.csv?dl=1")
    raw["mlflow"]["tracking_uri"] = "https://mlflow.example?workspace=ml"
    raw["tune"]["storage"] = f"postgresql+psycopg://{USER}@db.example/optuna"  # a user name only
    flat = parse_params(raw).flat()
    assert flat["data.url"] == "https://h/p.csv?dl=***"
    assert flat["mlflow.tracking_uri"] == "https://mlflow.example?workspace=***"
    assert flat["tune.storage"] == "postgresql+psycopg://***@db.example/optuna"
    assert TOKEN not in json.dumps(flat) and "s3cr" not in json.dumps(flat)


@pytest.mark.pipeline
def test_a_token_url_from_the_environment_never_reaches_dvc_lock_or_the_log(auth_root, tmp_path):
    """The documented way: data.url_env names a variable; dvc.lock holds only its name."""
    from conftest import dvc, make_project, project_env

    host, _ = auth_root
    project = make_project(tmp_path / "repo", {"data": {
        "source": "csv", "url_env": "PEOPLE_URL", "label_column": "species",
        "exclude_columns": ["city"]}})  # fmt: skip
    env = project_env(PEOPLE_URL=f"http://{host}/people.csv?token={TOKEN}",
                      no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")  # fmt: skip
    proc = dvc("repro", "ingest", cwd=project, env=env)
    assert (project / "data/raw/data.parquet").is_file()
    lock = (project / "dvc.lock").read_text()
    assert "PEOPLE_URL" in lock and TOKEN not in lock
    assert TOKEN not in proc.stdout + proc.stderr
    assert TOKEN not in (project / "params.yaml").read_text()


def test_a_duplicated_csv_header_is_refused_naming_the_column(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("x,y,x,label\n1,2,3,a\n4,5,6,b\n")
    with pytest.raises(NnopsError, match=r"d\.csv: column 'x' appears more than once in the "
                                         r"header \(again as column 3\)"):  # fmt: skip
        ingest.read_csv(path, "label")


def test_directory_missing_file_and_symlink_loop_are_told_apart(tmp_path: Path):
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "gone.csv")
    messages = {}
    for name in ("folder.csv", "absent.csv", "loop.csv", "dangling.csv"):
        with pytest.raises(NnopsError) as err:
            ingest.read_csv(tmp_path / name, "label")
        messages[name] = str(err.value)
    assert "folder.csv: is a directory; expected a csv file (data.path)" in messages["folder.csv"]
    assert "absent.csv: not found; expected a csv file" in messages["absent.csv"]
    assert "loop.csv: symlink loop; expected a csv file" in messages["loop.csv"]
    assert "dangling.csv: broken symlink to " in messages["dangling.csv"]
    assert len(set(messages.values())) == 4


def test_a_data_path_url_with_credentials_is_refused_and_auth_env_fetches_it(
    auth_root, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    host, _ = auth_root
    caplog.set_level("INFO")
    from nnops.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(source="csv", path=f"http://{USER}:{PASSWORD}@{host}/people.csv")
    with pytest.raises(ValueError, match=r"data\.path='http://bob:\*\*\*@.*a password") as err:
        parse_params(raw)  # the params check every stage runs first
    assert PASSWORD not in str(err.value)
    # the same URL with the secret in the environment instead: fetched, and watched by DVC
    monkeypatch.setenv("PEOPLE_AUTH", f"{USER}:{PASSWORD}")
    params = csv_params(tmp_path, path=f"http://{host}/people.csv", auth_env="PEOPLE_AUTH")
    assert len(ingest.load(params).frame) == 12
    assert AuthHandler.seen[-1]["auth"] == basic_auth(USER, PASSWORD)
    assert PASSWORD not in caplog.text


def test_label_spellings_are_stripped_and_case_variants_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    table = bunch.frame.drop(columns="target")
    table["species"] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    padded = table.copy()
    padded.loc[::7, "species"] = padded.loc[::7, "species"] + " "  # 'setosa ' from a hand edit
    with caplog.at_level("WARNING", logger="nnops.ingest"):
        raw = ingest.from_table(padded, "species", where="iris.csv")
    assert raw.meta["class_names"] == ["setosa", "versicolor", "virginica"]
    assert "stripped the spaces around 22 label(s), e.g. 'setosa ' -> 'setosa'" in caplog.text

    shouted = table.copy()
    shouted.loc[:2, "species"] = "SETOSA"
    with pytest.raises(NnopsError) as err:
        ingest.from_table(shouted, "species", where="iris.csv")
    assert str(err.value).startswith(
        "iris.csv: label column 'species': 'setosa' (47 rows) and 'SETOSA' (3 rows) differ "
        "only in letter case"
    )
    blank = table.copy()
    blank.loc[5, "species"] = "  "
    with pytest.raises(NnopsError, match=r"iris.csv: label column 'species' has 1 blank value"):
        ingest.from_table(blank, "species", where="iris.csv")


def test_boolean_labels_keep_their_names(tmp_path: Path):
    path = tmp_path / "flags.csv"
    pd.DataFrame({"x": np.arange(8.0) % 3, "ok": [True, False] * 4}).to_csv(path, index=False)
    raw = ingest.read_csv(path, "ok")
    assert raw.meta["class_names"] == ["False", "True"]
    assert raw.frame["label"].tolist() == [1, 0] * 4


def test_a_cut_short_csv_names_the_file_and_the_row(tmp_path: Path):
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    text = frame.to_csv(index=False)
    path = tmp_path / "wine.csv"
    path.write_text(text[: len(text) // 2])  # a partial download
    lines = path.read_text().splitlines()
    with pytest.raises(NnopsError) as err:
        ingest.read_csv(path, "label")
    message = str(err.value)
    assert message.startswith(f"{path}: label column 'label' has 1 empty value(s) (first in row "
                              f"{len(lines) - 1} after the header)")  # fmt: skip
    assert "was the file cut short" in message


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_semicolon_or_tab_separated_csv_is_read(tmp_path: Path, sep: str):
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    path = tmp_path / "iris.csv"
    frame.to_csv(path, index=False, sep=sep)
    raw = ingest.read_csv(path, "target")
    assert raw.meta["feature_names"] == list(frame.columns[:-1])
    assert np.allclose(raw.frame[frame.columns[:-1]].to_numpy(), frame.iloc[:, :-1].to_numpy())


def _compressed(path: Path, raw: bytes, kind: str) -> Path:
    """Write ``raw`` to ``path`` compressed as ``kind`` (a zip holds it as one member)."""
    import bz2
    import gzip
    import lzma
    import zipfile

    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("wine.csv", raw)
    else:
        path.write_bytes({"gzip": gzip, "bz2": bz2, "xz": lzma}[kind].compress(raw))
    return path


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "zip"])
def test_a_compressed_csv_is_read_like_the_plain_one(tmp_path: Path, kind: str):
    """Datasets often come as .csv.gz or a one-file zip: the first bytes decide, not the name
    (a gzip named data.csv is still read), and a ';'-separated one keeps its separator."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    plain = tmp_path / "wine.csv"
    frame.to_csv(plain, index=False, sep=";")
    expected = ingest.read_csv(plain, "target")
    for name in (f"wine.{kind}", "named-plain.csv"):
        raw = ingest.read_csv(_compressed(tmp_path / name, plain.read_bytes(), kind), "target")
        assert raw.meta["feature_names"] == expected.meta["feature_names"]
        assert raw.meta["n_rows"] == 178
        pd.testing.assert_frame_equal(raw.frame, expected.frame)


def test_a_cut_short_archive_or_a_zip_of_several_files_is_named(tmp_path: Path):
    import gzip
    import zipfile

    text = b"a,b,label\n" + b"".join(b"%d,%d,%d\n" % (i, i * 7 % 13, i % 2) for i in range(5000))
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(text)[:2000])
    with pytest.raises(NnopsError) as err:
        ingest.read_csv(cut, "label")
    assert str(err.value).startswith(f"{cut}: cannot decompress it (")
    assert "the archive is damaged or cut short" in str(err.value)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("train.csv", text)
        archive.writestr("test.csv", text)
    with pytest.raises(NnopsError) as err:
        ingest.read_csv(two, "label")
    assert str(err.value) == (
        f"{two}: a zip archive must hold exactly one CSV file; it holds 2: train.csv, test.csv"
    )


def test_a_label_column_of_one_class_is_refused_at_ingest(tmp_path: Path):
    """It used to pass ingest and stop in train with 'class_names lists 1 classes but labels
    range 0..0', which states two facts and not the problem."""
    path = tmp_path / "adelie.csv"
    path.write_text("bill,flipper,species\n39.1,181,Adelie\n39.5,186,Adelie\n40.3,195,Adelie\n")
    with pytest.raises(NnopsError) as err:
        ingest.read_csv(path, "species")
    assert str(err.value) == (
        f"{path}: label column 'species' holds one class only ('Adelie'); a classifier needs at "
        "least two"
    )


def test_excel_parquet_and_non_utf8_files_say_what_they_are(tmp_path: Path):
    """Before: a zip error for a workbook, 'utf-8 codec can't decode byte 0xe9 in position 142'
    for a parquet file or a cp1252 export."""
    frame = pd.DataFrame({"size": [1.0, 2.0, 3.0, 4.0], "kind": ["café", "thé", "café", "thé"]})
    frame.to_parquet(tmp_path / "data.parquet")
    with pytest.raises(NnopsError, match=r"data.parquet: a parquet file, not a CSV; write it out"):
        ingest.read_csv(tmp_path / "data.parquet", "kind")
    import zipfile

    with zipfile.ZipFile(tmp_path / "book.xlsx", "w") as book:  # the parts an .xlsx holds
        for part in ("[Content_Types].xml", "_rels/.rels", "xl/workbook.xml", "xl/sheet1.xml"):
            book.writestr(part, "<xml/>")
    with pytest.raises(NnopsError, match=r"book.xlsx: an Excel workbook, not a CSV; save the "):
        ingest.read_csv(tmp_path / "book.xlsx", "kind")
    frame.to_csv(tmp_path / "win.csv", index=False, encoding="cp1252")
    with pytest.raises(NnopsError) as err:
        ingest.read_csv(tmp_path / "win.csv", "kind")
    assert str(err.value).startswith(
        f"{tmp_path / 'win.csv'}: not UTF-8 text (byte b'\\xe9' on line 2); save it as UTF-8, e.g."
    )
    (tmp_path / "head.csv").write_bytes("caf\xe9,kind\n1,a\n2,b\n".encode("cp1252"))
    with pytest.raises(NnopsError, match=r"head.csv: not UTF-8 text \(byte b'\\xe9' on line 1\)"):
        ingest.read_csv(tmp_path / "head.csv", "kind")
