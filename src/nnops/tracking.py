"""MLflow at the stage edges: where the store is, failing fast, and the run's identifiers.

The train stage starts the run (``nnops.training_run``) and writes its id to ``models/run.json``;
evaluate, explain and register reopen the same run from that file. Nothing here runs at import
time, and mlflow itself is imported inside the functions so that light stages stay light.
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
from nnops.interrupts import deferred
from nnops.io import read_json, repo_root, write_json
from nnops.secrets import redact_url

log = logging.getLogger(__name__)

DEFAULT_STORE = "mlflow.db"
# Set by `nnops tune --apply` to its best_params.json: the run it starts links to the study.
TUNE_ENV = "NNOPS_TUNE_RESULT"

PID_TAG, HOST_TAG = "nnops.pid", "nnops.host"
"""Which process holds a run open: a RUNNING run whose process is gone was killed."""
SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(uri: str) -> None:
    """Refuse a damaged or emptied embedded store with one line naming the file and what to do.

    An sqlite store that does not exist yet is fine (the train stage creates it); an empty file
    where one was, or a file sqlite cannot read back, is an error, never a silent fresh store.

    Args:
        uri: the tracking URI (only ``sqlite:///`` URIs are checked).
    """
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        return
    if path.is_dir():
        raise NnopsError(f"{path}: the MLflow store is a directory, expected an sqlite file")
    size = path.stat().st_size
    what_to_do = (
        "restore it from a backup, or move it aside (the runs and registered models in it are "
        "then gone from this project) and rerun `dvc repro -f train`"
    )
    if size == 0:
        raise NnopsError(f"{path}: the MLflow store is an empty file (0 bytes); {what_to_do}")
    with path.open("rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise NnopsError(f"{path}: the MLflow store is not an sqlite database; {what_to_do}")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            result = db.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # another stage is writing (queued experiments): the store is in use, not bad
        raise NnopsError(f"{path}: the MLflow store cannot be read ({exc}); {what_to_do}") from None
    except sqlite3.DatabaseError as exc:
        raise NnopsError(f"{path}: the MLflow store is damaged ({exc}); {what_to_do}") from None
    if not result or result[0] != "ok":
        raise NnopsError(
            f"{path}: the MLflow store is damaged ({result[0] if result else 'no answer'}); "
            f"{what_to_do}"
        )


EMBEDDED_KEY = "embedded_store"  # in run.json's extra: the run lives in the project's mlflow.db


def embedded_store_uri(root: Path | None = None) -> str:
    """The project's embedded store, ``sqlite:///<main repository>/mlflow.db``.

    Args:
        root: the repository root; found from the environment when omitted.
    """
    return f"sqlite:///{((root or repo_root()) / DEFAULT_STORE).resolve()}"


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
    return embedded_store_uri(root)


def ensure_reachable(uri: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` with a message naming ``uri`` when a server store is down.

    Args:
        uri: the tracking URI.
        timeout_s: how long to wait for the server to answer.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        check_store(uri)
    if parsed.scheme not in ("http", "https"):
        return
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise NnopsError(
            f"MLflow tracking server at {redact_url(uri)} cannot be reached ({exc}); start it "
            "(see README, 'Tracking server') or unset MLFLOW_TRACKING_URI / mlflow.tracking_uri"
        ) from None
    # Keep MLflow's own HTTP client from retrying for minutes if the server hangs or goes away:
    # two tries of at most max(timeout_s, 5) seconds each (the params cap timeout_s at 30).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(timeout_s, 5))))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _without_userinfo(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    return parsed._replace(
        netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")
    ).geturl()


def auth_failure(uri: str, exc: Exception) -> str | None:
    """A clear message when a server refused the credentials (401/403), else None.

    Names the URI and the user, never the password.

    Args:
        uri: the tracking URI.
        exc: what the MLflow client raised.
    """
    code = str(getattr(exc, "error_code", ""))
    text = str(exc)
    where = _without_userinfo(uri)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED" or "error code 401" in text:
        if user:
            problem = f"rejected the password of user {user!r}"
        else:
            problem = "asks for credentials and none were given"
        return (
            f"MLflow tracking server at {where} {problem} (401 Unauthorized): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (team mode: . mlserver/team.env)"
        )
    if code == "PERMISSION_DENIED" or "error code 403" in text:
        return f"MLflow tracking server at {where} denies user {user!r} this access (403 Forbidden)"
    return None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of an embedded sqlite store across processes (no lock for servers).

    SIGINT/SIGTERM received inside the block are raised when it ends (``interrupts.deferred``),
    so a stop never cuts a commit in half.

    Args:
        uri: the tracking URI.
    """
    if not uri.startswith("sqlite:///"):
        with deferred():  # a signal lands after the request, not inside it
            yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    lock_path = db.with_name(db.name + ".lock")
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # waiting here can still be interrupted
        try:
            with deferred():  # a signal lands after the commit, not inside it
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
    for name in ("mlflow.store.db.utils", "alembic"):  # schema set-up chatter on a new store
        logging.getLogger(name).setLevel(logging.WARNING)
    with store_lock(uri):
        # The first client call creates/migrates the sqlite schema: do it under the lock.
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # a hung server or a broken store: name it, do not hang
            denied = auth_failure(uri, exc)
            if denied:
                raise NnopsError(denied) from None
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise NnopsError(
                f"MLflow tracking store at {redact_url(uri)} did not answer "
                f"({type(exc).__name__}: {first})"
            ) from None
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


def store_uri(info: RunInfo, timeout_s: float) -> str:
    """The store a later stage logs into: ``$MLFLOW_TRACKING_URI``, else the run's; checked.

    Args:
        info: identifiers from ``models/run.json``.
        timeout_s: how long to wait for a tracking server.
    """
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or info.tracking_uri
    if not os.environ.get("MLFLOW_TRACKING_URI") and (info.extra or {}).get(EMBEDDED_KEY):
        # The project's own store, wherever the project now is: a copied or moved project
        # logs into its own mlflow.db, never into the store of the checkout it came from.
        uri = embedded_store_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise NnopsError(
            f"models/run.json names MLflow run {info.run_id} in the store {uri}, which does not "
            "exist here (a run.json from another checkout?); retrain with `dvc repro -f train`"
        )
    ensure_reachable(uri, timeout_s)
    mlflow.set_tracking_uri(uri)
    return uri


@contextmanager
def resume_run(info: RunInfo, timeout_s: float = 10.0) -> Iterator[Any]:
    """Reopen the training run so that a later stage logs into it.

    Args:
        info: identifiers from ``models/run.json``.
        timeout_s: how long to wait for a tracking server.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = store_uri(info, timeout_s)
    try:
        mlflow.MlflowClient(uri).get_run(info.run_id)
    except MlflowException as exc:
        denied = auth_failure(uri, exc)
        if denied:
            raise NnopsError(denied) from None
        raise NnopsError(
            f"MLflow run {info.run_id} from models/run.json is not in the store {uri}; "
            "retrain with `dvc repro -f train`"
        ) from None
    close_dead_runs(uri, info.experiment_id)
    mlflow.MlflowClient(uri).set_tag(info.run_id, PID_TAG, process_tags()[PID_TAG])
    with mlflow.start_run(run_id=info.run_id) as run:
        yield run


def process_tags() -> dict[str, str]:
    """Tags naming this process, so that a later stage can tell a killed run from a live one."""
    from nnops.warm import stage_pid  # a warm child: the stage process DVC started

    return {PID_TAG: str(stage_pid()), HOST_TAG: socket.gethostname()}


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` on this machine still runs (another user's counts as running).

    Args:
        pid: the process id.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_dead_runs(uri: str, experiment_id: str) -> list[str]:
    """End as KILLED every RUNNING run of the experiment whose process on this host is gone.

    A process killed with SIGKILL (or a machine that lost power) cannot end its own run; the
    next stage that touches the store does it, and tags why. Runs held by another host, or
    without the process tags, are left alone.

    Args:
        uri: the tracking URI.
        experiment_id: the experiment to look in.

    Returns:
        The ids of the runs closed.
    """
    from mlflow import MlflowClient

    from nnops.warm import stage_pid

    client = MlflowClient(uri)
    host = socket.gethostname()
    closed = []
    try:
        running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    except Exception as exc:  # a sweep is housekeeping: never the reason a stage fails
        log.debug("could not look for dead runs: %s", exc)
        return []
    for run in running:
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) != host or not pid.isdigit() or int(pid) == stage_pid():
            continue
        if process_alive(int(pid)):
            continue
        with store_lock(uri):
            client.set_tag(run.info.run_id, "nnops.end_reason",
                           f"its process {pid} on {host} died without ending it; closed by "
                           f"process {stage_pid()}")  # fmt: skip
            client.set_terminated(run.info.run_id, "KILLED")
        log.warning(
            "MLflow run %s was left RUNNING by process %s, which is gone: marked KILLED",
            run.info.run_id, pid,
        )  # fmt: skip
        closed.append(run.info.run_id)
    return closed


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


def experiment_id(uri: str, name: str) -> str:
    """Return the id of experiment ``name``, creating it (with artifacts beside an embedded store).

    Artifacts of an embedded sqlite store go to ``mlartifacts/`` next to ``mlflow.db``, never to
    the working directory, which under ``dvc exp run --queue`` is a temporary copy.

    Args:
        uri: the tracking URI.
        name: the experiment name (``mlflow.experiment``).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    with store_lock(uri):
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts").resolve().as_uri()
        # MLflow 3 opens experiments on its GenAI views unless told this one trains models.
        kind = {"mlflow.experimentKind": "custom_model_development"}
        try:
            return str(client.create_experiment(name, artifact_location=location, tags=kind))
        except MlflowException as exc:
            # Another worker on the same server created it first (no file lock spans a server).
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)
