"""Serving the champion: a real `mlflow models serve` on 127.0.0.1, and batch prediction by alias.

The session's reproduced project (conftest) has a champion; it is served from the project's own
MLflow store and queried with raw test rows, and the answers are compared with the predictions of
the model file the evaluate stage scored. The project is only read: files go to ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, free_port, project_env, run, serving

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "nnops-mlp"


@pytest.fixture(scope="module")
def champion_project(reproduced_project: Path) -> Path:
    """The session's reproduced project, whose first model became @champion."""
    root = reproduced_project
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert registry["promoted"] is True and registry["alias"] == "champion", registry
    return root


@pytest.fixture(scope="module")
def expected(champion_project: Path) -> tuple[np.ndarray, np.ndarray]:
    """Raw test rows and the probabilities the evaluated model file gives for them."""
    import keras

    with np.load(champion_project / "data" / "processed" / "test.npz") as npz:
        x = npz["x_raw"][:25]
    model = keras.saving.load_model(champion_project / "models" / "model.keras", safe_mode=True)
    return x, model.predict(x, verbose=0)


@contextlib.contextmanager
def served(root: Path, model_uri: str, logs: Path):
    """Run `mlflow models serve` for ``model_uri`` on a free port; yield its base URL."""
    port = free_port()
    env = project_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with serving(cmd, f"{url}/ping", root, logs / f"serve-{port}.log", 240, env):
        yield url


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_served_champion_answers_raw_rows_with_the_evaluated_models_probabilities(
    champion_project: Path, expected, tmp_path: Path
):
    x, proba = expected
    with served(champion_project, f"models:/{MODEL}@champion", tmp_path) as url:
        status, answer = post(url, {"inputs": x.tolist()})
        assert status == 200, answer
        got = np.asarray(answer["predictions"], dtype=np.float64)
        assert got.shape == proba.shape == (25, 10)
        assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)  # class probabilities
        assert np.allclose(got, proba, atol=1e-5)
        assert (got.argmax(axis=1) == proba.argmax(axis=1)).all()

        # A row of the wrong width is refused by the model's signature, not silently scored.
        status, answer = post(url, {"inputs": x[:2, :10].tolist()})
        assert status >= 400 and answer


def test_batch_prediction_by_alias_matches_the_evaluated_model(
    champion_project: Path, expected, tmp_path: Path
):
    x, proba = expected
    root = champion_project
    pd.DataFrame(x, columns=[f"px_{i}" for i in range(x.shape[1])]).to_csv(
        tmp_path / "rows.csv", index=False
    )
    proc = run(
        [
            str(BIN / "nnops-predict"),
            "--model",
            f"models:/{MODEL}@champion",
            "--input",
            str(tmp_path / "rows.csv"),
            "--out",
            str(tmp_path / "preds.csv"),
        ],
        cwd=root,
    )
    assert "25 rows" in proc.stdout
    preds = pd.read_csv(tmp_path / "preds.csv")
    meta = json.loads((root / "data" / "processed" / "meta.json").read_text())
    names = [str(c) for c in meta["class_names"]]
    assert preds["predicted"].astype(str).tolist() == [names[i] for i in proba.argmax(axis=1)]
    assert np.allclose(preds[[f"p_{n}" for n in names]].to_numpy(), proba, atol=1e-5)

    # The stage entry reads the same store from params.yaml and takes npz input.
    run(
        [
            str(BIN / "python"),
            "pipelines/predict.py",
            "--model",
            f"models:/{MODEL}@champion",
            "--input",
            "data/processed/test.npz",
            "--out",
            str(tmp_path / "test_preds.csv"),
        ],
        cwd=root,
    )
    assert len(pd.read_csv(tmp_path / "test_preds.csv")) == meta["splits"]["test"]

    (tmp_path / "bad.csv").write_text("px_0,px_1\n1,oops\n")
    proc = run(
        [
            str(BIN / "nnops-predict"),
            "--input",
            str(tmp_path / "bad.csv"),
            "--out",
            str(tmp_path / "bad_preds.csv"),
        ],  # fmt: skip
        cwd=root,
        check=False,
    )
    # refused by the schema check against the training profile, before the model is loaded
    assert proc.returncode == 2 and not (tmp_path / "bad_preds.csv").exists()
    assert "bad.csv: does not match the training data" in proc.stderr
    assert "missing column(s) px_2, px_3, px_4, px_5, px_6 and 57 more" in proc.stderr
