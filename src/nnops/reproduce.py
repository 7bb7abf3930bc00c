"""Rerun the pipeline that made a registered model and check it yields the same model.

``nnops reproduce models:/nnops-mlp@champion`` reads the version's run lineage (git commit, dirty
flag, data hash, the ``dvc.lock`` the run carries), checks out that commit in a temporary git
worktree (the user's workspace is not touched), puts the exact data file there, runs
``dvc repro evaluate`` against a throwaway MLflow store, and compares weights, test metrics and
data hash with the registered version. Bit-identical on CPU; within a stated tolerance when the
registered model trained on a GPU (GPU kernels are not bit-reproducible across machines).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnops.errors import NnopsError
from nnops.lineage import LOCK_ARTIFACT

log = logging.getLogger(__name__)

TARGET = "evaluate"  # rebuild up to the test metrics; register would touch a registry
CODE_PREFIXES = ("pipelines/", "src/")


@dataclass(frozen=True)
class Lineage:
    """What a registered version's training run recorded about how it was made."""

    model_uri: str
    name: str
    version: str
    run_id: str
    commit: str
    dirty: str
    data_hash: str
    device: str
    exp_name: str | None
    metrics: dict[str, float]
    lock: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def on_gpu(self) -> bool:
        return "gpu" in self.device.lower()


@dataclass(frozen=True)
class Row:
    """One line of the side-by-side comparison."""

    name: str
    registered: str
    rerun: str
    match: bool


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """Split ``models:/name@alias`` or ``models:/name/version`` into (name, alias, version).

    Args:
        uri: the registered model URI.
    """
    found = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not found:
        raise NnopsError(
            f"{uri}: expected a registered model URI, models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    return found.group(1), found.group(2), found.group(3)


def read_lineage(uri: str, tracking_uri: str) -> Lineage:
    """Read the run lineage of the version ``uri`` names from the MLflow store.

    Args:
        uri: ``models:/name@alias`` or ``models:/name/version``.
        tracking_uri: the store that holds the registry.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, number = parse_model_uri(uri)
    store = tracking_uri.removeprefix("sqlite:///")
    if tracking_uri.startswith("sqlite:///") and not Path(store).is_file():
        raise NnopsError(f"{uri}: the MLflow store {store} does not exist (--tracking-uri?)")
    client = MlflowClient(tracking_uri)
    try:
        version = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, number)
        )
        if not version.run_id:
            raise NnopsError(f"{uri}: version {version.version} was not logged by a run")
        run = client.get_run(version.run_id)
    except MlflowException as exc:
        raise NnopsError(f"{uri}: not found in {tracking_uri} ({exc.message[:200]})") from None
    tags = run.data.tags
    lock = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(version.run_id, LOCK_ARTIFACT, tmp)
            lock = yaml.safe_load(Path(path).read_text())
        except (MlflowException, OSError):
            log.warning("run %s has no %s: data files unchecked", run.info.run_id, LOCK_ARTIFACT)
    return Lineage(
        model_uri=uri,
        name=name,
        version=str(version.version),
        run_id=version.run_id,
        commit=tags.get("git.commit", "unknown"),
        dirty=tags.get("git.dirty", "unknown"),
        data_hash=tags.get("data.hash", "unknown"),
        device=tags.get("device", ""),
        exp_name=tags.get("dvc.exp_name"),
        metrics={k: v for k, v in run.data.metrics.items() if k.startswith("test.")},
        lock=lock,
    )


def data_inputs(lock: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(path, md5)`` of the local data files the ingest stage read, from a ``dvc.lock``.

    Args:
        lock: the parsed ``dvc.lock`` the run carries.
    """
    deps = ((lock or {}).get("stages", {}).get("ingest") or {}).get("deps", [])
    return [
        (d["path"], d["md5"])
        for d in deps
        if "md5" in d and "://" not in d["path"] and not d["path"].startswith(CODE_PREFIXES)
    ]


def file_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file (of its bytes)."""
    digest = hashlib.md5()  # noqa: S324 - DVC's content address, not a security use
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NnopsError(f"git {' '.join(args)} failed: {proc.stderr.strip()[:300]}")
    return proc


def experiment_commit(repo: Path, name: str) -> str | None:
    """The commit DVC saved for experiment ``name`` (``refs/exps/.../<name>``), if it is kept.

    Args:
        repo: the user's repository.
        name: the DVC experiment name (the run's ``dvc.exp_name`` tag).
    """
    refs = _git(repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps", check=False)
    for line in refs.stdout.splitlines():
        sha, _, ref = line.partition(" ")
        if ref.endswith(f"/{name}"):
            return sha
    return None


def check_reproducible(lineage: Lineage, repo: Path) -> tuple[str, list[tuple[str, Path]]]:
    """Refuse a version that cannot be rebuilt; return its commit and the data files to use.

    A run of ``dvc exp run`` trains in a workspace DVC changed (the experiment's params), so its
    source is the commit DVC saved for the experiment, not the baseline the run's tags name.

    Args:
        lineage: the version's lineage.
        repo: the user's repository (its git history and its data files).

    Returns:
        The commit to rebuild and ``(dvc.lock dep path, file to copy there)`` pairs.
    """
    what = f"{lineage.model_uri} (version {lineage.version}, run {lineage.run_id})"
    if lineage.commit in ("", "unknown"):
        raise NnopsError(f"{what}: the run recorded no git commit; it cannot be rebuilt")
    commit = lineage.commit
    if lineage.exp_name:
        commit = experiment_commit(repo, lineage.exp_name) or ""
        if not commit:
            raise NnopsError(
                f"{what}: git commit of DVC experiment {lineage.exp_name!r} is missing from "
                f"{repo} (removed, or not pulled with `dvc exp pull`)"
            )
    elif _git(repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode:
        raise NnopsError(f"{what}: git commit {commit} is missing from {repo} (fetch it first)")
    elif lineage.dirty != "false":
        raise NnopsError(
            f"{what}: the workspace was dirty (git.dirty={lineage.dirty}) when it trained, so "
            f"commit {commit[:12]} does not hold the code and params that made it"
        )
    files = []
    for dep, md5 in data_inputs(lineage.lock):
        committed = _git(repo, "cat-file", "-e", f"{commit}:{dep}", check=False)
        if not Path(dep).is_absolute() and committed.returncode == 0:
            continue  # in git at that commit: the worktree holds it
        current = Path(dep) if Path(dep).is_absolute() else repo / dep
        cached = repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        if current.is_file() and file_md5(current) == md5:
            files.append((dep, current))
        elif cached.is_file():  # `dvc add`-ed: the exact bytes are in the DVC cache
            files.append((dep, cached))
        else:
            now = file_md5(current) if current.is_file() else "missing"
            raise NnopsError(
                f"{what}: data hash mismatch: data file {dep} changed since the run "
                f"(md5 {md5} then, {now} now) and the DVC cache does not hold the old one"
            )
    return commit, files


def rebuild(commit: str, repo: Path, workdir: Path, files: Sequence[tuple[str, Path]]) -> Path:
    """Check out ``commit`` in a git worktree under ``workdir`` and rerun its pipeline.

    MLflow writes to a store inside ``workdir``, so the user's store gets no runs.

    Args:
        commit: the commit to rebuild (from ``check_reproducible``).
        repo: the user's repository.
        workdir: an empty scratch directory.
        files: data files to put into the worktree (from ``check_reproducible``).
    """
    tree = workdir / "tree"
    _git(repo, "worktree", "add", "--detach", str(tree), commit)
    for dep, source in files:
        target = Path(dep) if Path(dep).is_absolute() else tree / dep
        if target != source:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
    cmd = [dvc, "repro", "--no-run-cache", TARGET]
    log.info("rerunning %s at %s in %s", " ".join(cmd[1:]), commit[:12], tree)
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise NnopsError(f"dvc repro {TARGET} at {commit[:12]} failed: {' | '.join(tail)}")
    return tree


def weights_of(model: Any) -> list[Any]:
    """The model's weight arrays, in layer order, as numpy."""
    import numpy as np

    return [np.asarray(w) for w in model.get_weights()]


def weights_digest(weights: Sequence[Any]) -> str:
    """sha256 over the shapes, dtypes and bytes of every weight array."""
    digest = hashlib.sha256()
    for w in weights:
        digest.update(f"{w.shape}{w.dtype}".encode())
        digest.update(w.tobytes())
    return digest.hexdigest()


def compare(lineage: Lineage, tree: Path, tracking_uri: str, tolerance: float) -> list[Row]:
    """Side-by-side rows: weights, data hash, each test metric; registered against rerun.

    Args:
        lineage: the registered version's lineage.
        tree: the worktree the pipeline reran in.
        tracking_uri: the user's store (to load the registered model).
        tolerance: the largest absolute difference accepted (0: bit-identical).
    """
    from nnops.distribute import import_tensorflow

    import_tensorflow()
    import keras
    import mlflow.keras
    import numpy as np

    from nnops.evaluate import flat_metrics
    from nnops.io import read_json

    mlflow.set_tracking_uri(tracking_uri)
    registered = weights_of(mlflow.keras.load_model(f"models:/{lineage.name}/{lineage.version}"))
    rerun = weights_of(keras.saving.load_model(tree / "models" / "model.keras", safe_mode=True))
    same_shapes = [a.shape for a in registered] == [b.shape for b in rerun]
    gap = (
        max(
            (float(np.max(np.abs(a - b))) if a.size else 0.0)
            for a, b in zip(registered, rerun, strict=True)
        )
        if same_shapes and registered
        else float("inf")
    )
    old, new = weights_digest(registered), weights_digest(rerun)
    rows = [Row("weights sha256", old[:16], new[:16], old == new or gap <= tolerance)]
    if tolerance:
        rows.append(Row("weights max |diff|", "-", f"{gap:.3g}", gap <= tolerance))
    data_hash = str(read_json(tree / "data" / "processed" / "meta.json").get("data_hash"))
    rows.append(
        Row("data hash", lineage.data_hash[:16], data_hash[:16], lineage.data_hash == data_hash)
    )
    metrics = flat_metrics(read_json(tree / "reports" / "metrics.json"))
    for key in sorted(lineage.metrics):
        value = metrics.get(key)
        ok = value is not None and abs(value - lineage.metrics[key]) <= tolerance
        rows.append(Row(key, repr(lineage.metrics[key]), repr(value), ok))
    return rows


def format_rows(rows: Sequence[Row], lineage: Lineage, commit: str, tolerance: float) -> str:
    """The comparison as a fixed-width table with a header naming the version and commit."""
    head = ("", f"registered v{lineage.version}", "rerun", "")
    table = [head, *((r.name, r.registered, r.rerun, "ok" if r.match else "DIFFERS") for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    rule = "bit-identical" if not tolerance else f"within {tolerance:g} (GPU run)"
    return (
        f"{lineage.model_uri} = version {lineage.version}, run {lineage.run_id}, "
        f"commit {commit[:12]}; compared {rule}\n" + "\n".join(lines)
    )


def reproduce(
    uri: str, repo: Path, tracking_uri: str, gpu_tolerance: float, keep: Path | None = None
) -> tuple[bool, str]:
    """Rebuild the version ``uri`` names and compare; return (all match, the printed table).

    Args:
        uri: ``models:/name@alias`` or ``models:/name/version``.
        repo: the user's repository root.
        tracking_uri: the store holding the registry.
        gpu_tolerance: the tolerance used when the registered model trained on a GPU.
        keep: a directory to rebuild in and keep (default: a temporary one, removed after).
    """
    lineage = read_lineage(uri, tracking_uri)
    commit, files = check_reproducible(lineage, repo)
    tolerance = gpu_tolerance if lineage.on_gpu else 0.0
    log.info("tolerance %g (registered model trained on %s)", tolerance, lineage.device or "?")
    workdir = keep or Path(tempfile.mkdtemp(prefix="nnops-reproduce-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        tree = rebuild(commit, repo, workdir, files)
        rows = compare(lineage, tree, tracking_uri, tolerance)
    finally:
        if keep is None:
            _git(repo, "worktree", "remove", "--force", str(workdir / "tree"), check=False)
            shutil.rmtree(workdir, ignore_errors=True)
            _git(repo, "worktree", "prune", check=False)
    return all(r.match for r in rows), format_rows(rows, lineage, commit, tolerance)


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("model_uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--tracking-uri", help="the MLflow store (default: as the pipeline uses)")
    p.add_argument(
        "--gpu-tolerance",
        type=float,
        default=1e-3,
        help="largest absolute weight/metric difference accepted for a model trained on a GPU",
    )
    p.add_argument("--keep", type=Path, help="rebuild in this directory and keep it")
    return p


def main(argv: list[str] | None = None, prog: str = "nnops reproduce") -> int:
    """Run ``nnops reproduce``: 0 when the rerun matches, 1 when it differs, 2 when refused.

    Args:
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
        prog: the program name used in messages.
    """
    from nnops.config import ConfigError
    from nnops.predict import default_tracking_uri
    from nnops.stage import start_command

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = start_command(parser(prog), argv)
    try:
        top = _git(Path.cwd(), "rev-parse", "--show-toplevel").stdout.strip()
        uri = args.tracking_uri or default_tracking_uri()
        same, table = reproduce(args.model_uri, Path(top), uri, args.gpu_tolerance, args.keep)
    except (NnopsError, ConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(table)
    print(f"{prog}: {'reproduced' if same else 'NOT reproduced: see DIFFERS above'}")
    return 0 if same else 1
