"""Team mode: a PostgreSQL-backed MLflow tracking server with MLflow's basic-auth app.

``python -m nnops.team up`` (``make team-up``) starts, on 127.0.0.1:

* a PostgreSQL cluster initialised into ``mlserver/pg`` (``nnops.postgres``; as the unprivileged
  ``nnopspg`` user when run as root, since PostgreSQL refuses root), unless ``$NNOPS_DB_URI``
  names an existing database server;
* ``mlflow server --app-name nnops-auth`` (MLflow's basic-auth app, see ``nnops.mlflow_app``)
  with the runs in PostgreSQL, the users in a second database, and artifacts proxied by the
  server into ``mlserver/artifacts`` (an ``s3://`` or ``gs://`` URI in ``$NNOPS_ARTIFACTS``
  replaces the folder);

and writes ``mlserver/team.env`` (mode 600) with the tracking URI and the admin credentials, so
``. mlserver/team.env && dvc repro`` logs to the server. The admin password is generated on the
first start and kept in ``mlserver/auth.ini`` (mode 600); MLflow creates the admin user with it
once. ``python -m nnops.team down`` stops what ``up`` started. Secrets travel in files and
environment variables, never on a command line.
"""

from __future__ import annotations

import argparse
import configparser
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from nnops.errors import NnopsError
from nnops.postgres import (
    AUTH_DB,
    RUNS_DB,
    db_uri,
    ensure_databases,
    postgres_running,
    start_postgres,
    stop_postgres,
)

log = logging.getLogger(__name__)

ADMIN = "admin"
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TeamDirs:
    """Where team mode keeps its state (all under one folder, ``mlserver/`` by default)."""

    root: Path

    @property
    def pg(self) -> Path:
        return Path(os.environ.get("NNOPS_PG_DIR") or self.root / "pg")

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def auth_ini(self) -> Path:
        return self.root / "auth.ini"

    @property
    def env_file(self) -> Path:
        return self.root / "team.env"

    @property
    def server_pid(self) -> Path:
        return self.root / "server.pid"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"


# --- The authenticated MLflow server -------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


AUTH_CACHE_TTL_S = 60  # seconds a worker trusts a checked user:password (MLflow's auth cache)


def auth_config(dirs: TeamDirs, auth_db_uri: str) -> configparser.ConfigParser:
    """Load ``auth.ini`` or create it with a fresh admin password; keep ``database_uri`` current.

    Args:
        dirs: team mode's folders.
        auth_db_uri: the database of MLflow's users and permissions.
    """
    config = configparser.ConfigParser(interpolation=None)
    if dirs.auth_ini.exists():
        config.read(dirs.auth_ini)
    section = config["mlflow"] if config.has_section("mlflow") else None
    if section is None:
        config["mlflow"] = {}
        section = config["mlflow"]
    section.setdefault("admin_username", ADMIN)
    section.setdefault("admin_password", secrets.token_urlsafe(24))
    # Every signed-in team member may log runs and register models; admins manage users.
    section.setdefault("default_permission", "EDIT")
    # Without it every request re-hashes the password (~0.3 s of server CPU on 2 cores: a stage
    # makes dozens of requests). A password change reaches the other workers within this TTL.
    section.setdefault("auth_cache_ttl_seconds", str(AUTH_CACHE_TTL_S))
    section["database_uri"] = auth_db_uri
    section["authorization_function"] = "mlflow.server.auth:authenticate_request_basic_auth"
    lines = ["[mlflow]", *(f"{k} = {v}" for k, v in section.items()), ""]
    write_private(dirs.auth_ini, "\n".join(lines))
    return config


def server_command(host: str, port: int, artifacts: str, workers: int) -> list[str]:
    """The ``mlflow server`` command line with the basic-auth app (no secrets in it).

    The backend store URI, which holds the database password, goes in
    ``$MLFLOW_BACKEND_STORE_URI``.

    Args:
        host: the interface to bind.
        port: the port.
        artifacts: the artifact destination (a ``file://`` folder, ``s3://`` or ``gs://`` URI).
        workers: server worker processes.
    """
    return [
        sys.executable, "-m", "mlflow", "server",
        "--app-name", "nnops-auth",  # MLflow's basic-auth app, UI opening on model training
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip


def server_env(dirs: TeamDirs, backend_uri: str) -> dict[str, str]:
    """The server's environment: store URI, auth config, session-signing key; telemetry off.

    The signing key (CSRF tokens of the sign-in forms) is generated once and shared by all
    workers and restarts, so a restart does not invalidate open browser sessions.
    """
    from nnops.stage import QUIET_ENV

    key = dirs.root / "flask.key"
    if not key.exists():
        write_private(key, secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(QUIET_ENV)
    env.update(
        MLFLOW_BACKEND_STORE_URI=backend_uri,
        MLFLOW_AUTH_CONFIG_PATH=str(dirs.auth_ini),
        MLFLOW_FLASK_SERVER_SECRET_KEY=key.read_text().strip(),
        # No GenAI job workers (trace scoring, issue detection): nnops trains models.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    return env


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url``/health answers 200 (the health page needs no credentials)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise NnopsError(f"MLflow server for {url} exited {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise NnopsError(f"MLflow server at {url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.5)


def start_server(
    dirs: TeamDirs, backend_uri: str, port: int, artifacts: str | None = None, workers: int = 2
) -> subprocess.Popen:
    """Start the authenticated server in the background; return once it answers.

    Args:
        dirs: team mode's folders (``auth.ini`` must exist).
        backend_uri: the runs database.
        port: the port on 127.0.0.1.
        artifacts: the artifact destination (``dirs.artifacts`` when omitted).
        workers: server worker processes.
    """
    dirs.artifacts.mkdir(parents=True, exist_ok=True)
    destination = artifacts or dirs.artifacts.resolve().as_uri()
    cmd = server_command(HOST, port, destination, workers)
    with open(dirs.server_log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=server_env(dirs, backend_uri), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    dirs.server_pid.write_text(f"{proc.pid}\n")
    url = f"http://{HOST}:{port}"
    try:
        wait_healthy(url, START_TIMEOUT_S, proc)
    except NnopsError:
        stop_server(dirs)
        raise NnopsError(f"MLflow server at {url} failed to start; see {dirs.server_log}") from None
    return proc


def stop_server(dirs: TeamDirs, timeout_s: float = 20.0) -> bool:
    """Stop the server ``start_server`` started (its whole process group); True if one ran."""
    if not dirs.server_pid.exists():
        return False
    pid = int(dirs.server_pid.read_text().strip() or 0)
    dirs.server_pid.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        with suppress(ChildProcessError):  # reap our own child (tests): no zombie lingers
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def env_file_text(url: str, username: str, password: str) -> str:
    """The content of ``team.env``: what a shell needs to log to the server."""
    return (
        "# nnops team mode (written by `make team-up`; keep private, never commit)\n"
        f"export MLFLOW_TRACKING_URI={url}\n"
        f"export MLFLOW_TRACKING_USERNAME={username}\n"
        f"export MLFLOW_TRACKING_PASSWORD={password}\n"
    )


@dataclass(frozen=True)
class Team:
    """A running team server: its URL, admin credentials and the runs database URI."""

    url: str
    username: str
    password: str
    backend_uri: str


def up(dirs: TeamDirs, port: int, pg_port: int, workers: int = 2) -> Team:
    """Start PostgreSQL (unless ``$NNOPS_DB_URI``), then the authenticated server.

    Args:
        dirs: team mode's folders.
        port: the MLflow server's port on 127.0.0.1.
        pg_port: the local PostgreSQL port (unused with ``$NNOPS_DB_URI``).
        workers: server worker processes.
    """
    dirs.root.mkdir(parents=True, exist_ok=True)
    url = f"http://{HOST}:{port}"
    if dirs.server_pid.exists():
        raise NnopsError(f"{dirs.server_pid} exists: a team server may be running; run team-down")
    base = os.environ.get("NNOPS_DB_URI")
    db_secret = dirs.root / "db.password"
    if not base:
        if not db_secret.exists():
            write_private(db_secret, secrets.token_urlsafe(24))
        base = start_postgres(dirs.pg, pg_port, db_secret.read_text().strip())
    ensure_databases(base)
    config = auth_config(dirs, db_uri(base, AUTH_DB))
    backend = db_uri(base, RUNS_DB)
    start_server(dirs, backend, port, os.environ.get("NNOPS_ARTIFACTS"), workers)
    username, password = config["mlflow"]["admin_username"], config["mlflow"]["admin_password"]
    write_private(dirs.env_file, env_file_text(url, username, password))
    return Team(url, username, password, backend)


def down(dirs: TeamDirs) -> list[str]:
    """Stop the server and the local PostgreSQL cluster; return what was stopped."""
    stopped = []
    if stop_server(dirs):
        stopped.append("MLflow server")
    if (dirs.pg / "data" / "PG_VERSION").exists() and postgres_running(dirs.pg):
        stop_postgres(dirs.pg)
        stopped.append("PostgreSQL")
    return stopped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnops.team",
        description="Start or stop the team's MLflow server (PostgreSQL + basic auth).",
    )
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--port", type=int, default=5000, help="MLflow server port (5000)")
    parser.add_argument("--pg-port", type=int, default=5433, help="local PostgreSQL port (5433)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (2)")
    parser.add_argument("--dir", default=None, help="state folder (<repo>/mlserver)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``team up`` / ``team down``; return an exit code.

    Args:
        argv: command-line arguments, for tests; defaults to ``sys.argv[1:]``.
    """
    from nnops.io import repo_root

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    dirs = TeamDirs(Path(args.dir) if args.dir else repo_root() / "mlserver")
    try:
        if args.action == "down":
            stopped = down(dirs)
            log.info("stopped: %s", ", ".join(stopped) if stopped else "nothing was running")
            return 0
        if shutil.which("runuser") is None and os.geteuid() == 0:
            raise NnopsError("PostgreSQL: running as root needs `runuser` (util-linux)")
        team = up(dirs, args.port, args.pg_port, args.workers)
    except NnopsError as exc:
        print(f"team {args.action}: error: {exc}", file=sys.stderr)
        return 2
    log.info(
        "MLflow server with sign-in at %s (runs in PostgreSQL, user %s; password in %s)\n"
        "Log the pipeline to it:  . %s && dvc repro\nStop it:  make team-down",
        team.url, team.username, dirs.env_file, dirs.env_file,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
