"""MLflow at the stage edges: where the store is, failing fast, and one run per pipeline execution.

The train stage starts the run and writes its id to ``models/run.json``; evaluate, explain and
register reopen the same run from that file. Nothing here runs at import time, and mlflow itself
is imported inside the functions so that light stages stay light.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nnops.config import MlflowParams
from nnops.errors import NnopsError
from nnops.io import read_json, repo_root, write_json

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"


def resolve_tracking_uri(params: MlflowParams, root: Path | None = None) -> str:
    """Pick the tracking URI: ``$MLFLOW_TRACKING_URI``, else params, else the embedded store.

    The embedded default is ``sqlite:///<main repository>/mlflow.db``; the main repository is
    ``$DVC_ROOT`` under ``dvc exp run --queue``, so queued experiments land in the same store.

    Args:
        params: the ``mlflow`` params section.
        root: the repository root; found from the environment when omitted.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if params.tracking_uri:
        return params.tracking_uri
    root = root or repo_root()
    return f"sqlite:///{(root / DEFAULT_STORE).resolve()}"


def ensure_reachable(uri: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` with a message naming ``uri`` when a server store is down.

    Args:
        uri: the tracking URI.
        timeout_s: how long to wait for the server to answer.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise NnopsError(
            f"MLflow tracking server at {uri} cannot be reached ({exc}); start it "
            "(see README, 'Tracking server') or unset MLFLOW_TRACKING_URI / mlflow.tracking_uri"
        ) from None
    # Keep MLflow's own HTTP client from retrying for minutes if the server goes away later.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(timeout_s, 5))))


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of an embedded sqlite store across processes (no-op for servers).

    Args:
        uri: the tracking URI.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    lock_path = db.with_name(db.name + ".lock")
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def connect(params: MlflowParams) -> str:
    """Point MLflow at the project's store, creating an embedded store safely; return its URI.

    Args:
        params: the ``mlflow`` params section.
    """
    import mlflow

    uri = resolve_tracking_uri(params)
    ensure_reachable(uri, params.connect_timeout_s)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        # The first client call creates/migrates the sqlite schema: do it under the lock.
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    return uri


@dataclass(frozen=True)
class RunInfo:
    """What later stages need to log into the run that training started."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None = None
    extra: dict[str, Any] | None = None


def write_run_info(path: str | Path, info: RunInfo) -> None:
    """Write ``models/run.json``.

    Args:
        path: the destination.
        info: the run's identifiers.
    """
    write_json(path, asdict(info))


def read_run_info(path: str | Path) -> RunInfo:
    """Read ``models/run.json``, naming the file and key when something is missing.

    Args:
        path: the run file written by the train stage.
    """
    data = read_json(path)
    missing = [k for k in ("run_id", "experiment_id", "tracking_uri") if not data.get(k)]
    if missing:
        raise NnopsError(f"{path}: missing key(s) {', '.join(missing)}")
    return RunInfo(**{k: data.get(k) for k in RunInfo.__dataclass_fields__})


@contextmanager
def resume_run(info: RunInfo, timeout_s: float = 10.0) -> Iterator[Any]:
    """Reopen the training run so that a later stage logs into it.

    Args:
        info: identifiers from ``models/run.json``.
        timeout_s: how long to wait for a tracking server.
    """
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or info.tracking_uri
    ensure_reachable(uri, timeout_s)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=info.run_id) as run:
        yield run


def wait_for_server(uri: str, timeout_s: float) -> None:
    """Block until an HTTP tracking server accepts connections (used by ``make ui`` and tests).

    Args:
        uri: the server URI.
        timeout_s: the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ensure_reachable(uri, 1.0)
            return
        except NnopsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
