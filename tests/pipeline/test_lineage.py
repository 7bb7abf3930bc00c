"""Lineage in DVC's graph: the user's data file, a shared remote and the run-cache, with real DVC.

- A CSV at data.path is an ingest dependency: editing one cell makes `dvc status` name ingest,
  `dvc repro` reruns it and what follows, and the new MLflow run's data hash differs.
- data.path may be an http(s) URL, tracked by DVC through the server's ETag / Last-Modified;
  data.sha256 still stops ingest before a file that does not match is used.
- Three git clones share one local directory as the DVC remote (standing in for S3/GCS/SSH).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import (
    CSV_PARAMS,
    dvc,
    edit_csv_cell,
    free_port,
    make_project,
    run,
    serving,
    set_params,
    write_digits_csv,
)

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]

DATA_STAGES = ("ingest", "validate", "preprocess")


def _lock_deps(root: Path, stage: str) -> dict[str, dict]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {d["path"]: d for d in lock["stages"][stage]["deps"]}


def _training_runs(root: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("nnops")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_editing_one_csv_cell_reruns_ingest_and_changes_the_run_data_hash(tmp_path: Path) -> None:
    root = make_project(tmp_path / "repo", CSV_PARAMS)
    csv = write_digits_csv(root / "inputs" / "digits.csv")
    dvc("repro", "train", cwd=root)
    first_md5 = _lock_deps(root, "ingest")["inputs/digits.csv"]["md5"]
    assert "up to date" in dvc("status", "train", "--with-deps", cwd=root).stdout

    edit_csv_cell(csv)
    status = json.loads(dvc("status", "train", "--with-deps", "--json", cwd=root).stdout)
    assert {"changed deps": {"inputs/digits.csv": "modified"}} in status["ingest"], status
    out = dvc("repro", "train", cwd=root).stdout
    for stage in ("ingest", "preprocess", "train"):
        assert f"Running stage '{stage}'" in out, out
    second_md5 = _lock_deps(root, "ingest")["inputs/digits.csv"]["md5"]
    assert second_md5 != first_md5

    old, new = _training_runs(root)
    assert old.data.tags["data.hash"] != new.data.tags["data.hash"]
    # Each run carries the dvc.lock it was built from, with the CSV's hash at that time.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for found, md5 in ((old, first_md5), (new, second_md5)):
        lock_file = client.download_artifacts(found.info.run_id, "lineage/dvc.lock", str(tmp_path))
        deps = yaml.safe_load(Path(lock_file).read_text())["stages"]["ingest"]["deps"]
        recorded = next(d["md5"] for d in deps if d["path"] == "inputs/digits.csv")
        assert recorded == md5
    # ... and a digest of each row it trained on, for the register gate's fair comparison.
    from nnops.catalog import read_split, split_path
    from nnops.lineage import ARTIFACT, row_digests

    seen = np.load(client.download_artifacts(new.info.run_id, ARTIFACT, str(tmp_path / "seen")))
    rows = [read_split(split_path(root / "data" / "processed", s))[0] for s in ("train", "val")]
    assert len(seen) > 1000 and np.array_equal(seen, row_digests(*rows))
    # ... and the model its input columns in order, for predict and the register gate.
    import mlflow

    from nnops.registry import model_feature_names

    meta = json.loads((root / "data/processed/meta.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        model_uri = json.loads((root / "models/run.json").read_text())["model_uri"]
        assert model_feature_names(model_uri) == meta["feature_names"]
    finally:
        mlflow.set_tracking_uri(None)


def test_data_path_url_is_tracked_and_sha256_is_checked(tmp_path: Path) -> None:
    served = tmp_path / "served"
    csv = write_digits_csv(served / "digits.csv")
    port = free_port()
    url = f"http://127.0.0.1:{port}/digits.csv"
    params = {**CSV_PARAMS, "data": {**CSV_PARAMS["data"], "path": url}}
    root = make_project(tmp_path / "repo", params)
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with serving(cmd + ["--directory", str(served)], url, root, tmp_path / "http.log"):
        dvc("repro", "ingest", cwd=root)
        assert url in _lock_deps(root, "ingest")  # hashed by the server's metadata
        assert "up to date" in dvc("status", "ingest", cwd=root).stdout
        time.sleep(1.1)  # Last-Modified has one-second resolution
        edit_csv_cell(csv)
        status = json.loads(dvc("status", "ingest", "--json", cwd=root).stdout)
        assert {"changed deps": {url: "modified"}} in status["ingest"], status
        before = (root / "data" / "raw" / "data.parquet").read_bytes()
        assert "Running stage 'ingest'" in dvc("repro", "ingest", cwd=root).stdout
        assert (root / "data" / "raw" / "data.parquet").read_bytes() != before  # fetched anew

        # A checksum that does not match stops ingest before the file is used.
        raw = (root / "data" / "raw" / "data.parquet").read_bytes()
        set_params(root, {"data": {"sha256": "0" * 64}})
        failed = dvc("repro", "ingest", cwd=root, check=False)
        assert failed.returncode != 0
        assert "sha256" in failed.stderr + failed.stdout and "data.sha256" in failed.stderr
        # DVC clears a stage's outputs before running it; the last good ones are in its cache.
        dvc("checkout", "ingest", cwd=root)
        assert (root / "data" / "raw" / "data.parquet").read_bytes() == raw


def _git(root: Path, *args: str) -> str:
    return run(["git", *args], cwd=root).stdout


def test_remote_shares_data_and_models_and_the_run_cache_restores_stages(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    a = make_project(tmp_path / "a", {"train": {"epochs": 2}, "explain": {"enabled": False}})
    dvc("remote", "add", "-d", "shared", str(remote), cwd=a)
    _git(a, "add", ".dvc/config")
    _git(a, "commit", "-qm", "shared DVC remote")
    code_commit = _git(a, "rev-parse", "HEAD").strip()

    # Clone A runs the pipeline, commits dvc.lock and pushes data, models and the run-cache.
    dvc("repro", cwd=a)
    assert "inputs/embedded.txt" in _lock_deps(a, "ingest")  # digits: the placeholder, no file
    _git(a, "add", "-A")
    _git(a, "commit", "-qm", "pipeline results")
    dvc("push", "--run-cache", cwd=a)

    # Clone B pulls what A made: byte-identical model and processed data, nothing to rerun.
    b = tmp_path / "b"
    run(["git", "clone", "-q", str(a), str(b)], cwd=tmp_path)
    dvc("pull", cwd=b)
    assert (b / "models/model.keras").read_bytes() == (a / "models/model.keras").read_bytes()
    processed = sorted(p.relative_to(a) for p in (a / "data/processed").rglob("*") if p.is_file())
    assert processed
    for rel in processed:
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel
    # Every output is either cached (pulled) or in git (reports/metrics.json): nothing is
    # missing, so nothing would rerun (train's resume point, models/backup, is no DVC output).
    assert json.loads(dvc("status", "--json", cwd=b).stdout) == {}
    shutil.rmtree(b / "models")  # a user's slip: `dvc checkout` brings it all back
    dvc("checkout", cwd=b)
    assert (b / "models/model.keras").read_bytes() == (a / "models/model.keras").read_bytes()
    assert json.loads(dvc("status", "--json", cwd=b).stdout) == {}

    # Clone C is at the code commit without dvc.lock: the run-cache A pushed restores stages.
    c = tmp_path / "c"
    run(["git", "clone", "-q", str(a), str(c)], cwd=tmp_path)
    _git(c, "reset", "-q", "--hard", code_commit)
    assert not (c / "dvc.lock").exists()
    # No dvc.lock here: pull only the run-cache entries; `repro --pull` fetches the outputs of the
    # entries it restores.
    dvc("pull", "--run-cache", "--allow-missing", cwd=c)
    out = dvc("repro", "--pull", cwd=c).stdout
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' is cached - skipping run" in out, out
        assert f"Running stage '{stage}'" not in out, out
    # train keeps a resumable backup (models/backup, persist: true), which DVC's run-cache does
    # not store; it reruns, deterministically, and opens a new MLflow run in this clone. The
    # stages after it depend on models/run.json, which names that new run, so they rerun too.
    assert "Running stage 'train'" in out, out
    for rel in processed:
        assert (c / rel).read_bytes() == (a / rel).read_bytes(), rel
    assert (c / "reports/metrics.json").read_text() == (a / "reports/metrics.json").read_text()
