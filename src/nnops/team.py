"""Team mode: a PostgreSQL-backed MLflow tracking server with MLflow's basic-auth app.

``python -m nnops.team up`` (``make team-up``) starts, on 127.0.0.1:

* a PostgreSQL 15 cluster initialised into ``mlserver/pg`` (as the unprivileged ``nnopspg``
  user when run as root, since PostgreSQL refuses root), unless ``$NNOPS_DB_URI`` names an
  existing database server;
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
from urllib.parse import quote, urlparse

from nnops.errors import NnopsError

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("NNOPS_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = "nnopspg"  # the unprivileged account PostgreSQL runs as when we are root
DB_USER = "nnops"
RUNS_DB, AUTH_DB = "mlflow", "mlflow_auth"  # two databases: each keeps its own alembic history
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


# --- PostgreSQL -----------------------------------------------------------------------------------


def _as_pg_user(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as the PostgreSQL account when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", PG_OS_USER, "--", *cmd]


def _pg(cmd: list[str], what: str, timeout: float = START_TIMEOUT_S) -> str:
    try:
        proc = subprocess.run(
            _as_pg_user(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NnopsError(f"PostgreSQL: {what} failed ({exc})") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise NnopsError(f"PostgreSQL: {what} failed: {' | '.join(detail)}")
    return proc.stdout


def _ensure_pg_account(folder: Path) -> None:
    """As root: create the PostgreSQL account if missing and hand it ``folder``."""
    if os.geteuid() != 0:
        return
    import pwd

    try:
        account = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             PG_OS_USER],
            check=True, capture_output=True,
        )  # fmt: skip
        account = pwd.getpwnam(PG_OS_USER)
    folder.mkdir(parents=True, exist_ok=True)
    for path in (folder, *folder.rglob("*")):
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    folder.chmod(0o700)
    probe = subprocess.run(_as_pg_user(["test", "-w", str(folder)]), check=False)
    if probe.returncode != 0:
        raise NnopsError(
            f"PostgreSQL: the {PG_OS_USER} account cannot reach {folder} (a parent folder is "
            "private); set NNOPS_PG_DIR to a folder it can reach, e.g. under /tmp or /var/lib"
        )


def postgres_running(folder: Path) -> bool:
    """Whether the cluster in ``folder`` is up (``pg_ctl status``)."""
    data = folder / "data"
    if not (data / "PG_VERSION").exists():
        return False
    cmd = _as_pg_user([str(PG_BIN / "pg_ctl"), "status", "-D", str(data)])
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def start_postgres(folder: Path, port: int, password: str) -> str:
    """Initialise (first time) and start a cluster on 127.0.0.1:``port``; return its base URI.

    Connections need ``DB_USER`` and ``password`` (scram-sha-256), over TCP on 127.0.0.1 or the
    unix socket in ``folder/run``.

    Args:
        folder: the cluster's folder (``data/``, ``run/``, ``postgres.log``).
        port: the TCP port.
        password: the database user's password (set at ``initdb``).
    """
    if not (PG_BIN / "initdb").exists():
        raise NnopsError(f"PostgreSQL: {PG_BIN}/initdb not found (set NNOPS_PG_BIN)")
    folder.mkdir(parents=True, exist_ok=True)
    _ensure_pg_account(folder)
    data, sock = folder / "data", folder / "run"
    if not (data / "PG_VERSION").exists():
        pwfile = folder / "initdb.pw"
        pwfile.write_text(password + "\n")
        _ensure_pg_account(folder)
        try:
            _pg([str(PG_BIN / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(pwfile),
                 "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
                 "--locale=C.UTF-8"], "initdb")  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
    _ensure_pg_account(folder)
    sock.mkdir(exist_ok=True)
    _ensure_pg_account(folder)
    if not postgres_running(folder):
        options = f"-c listen_addresses={HOST} -p {port} -k {sock}"
        wait = str(int(START_TIMEOUT_S))
        _pg([str(PG_BIN / "pg_ctl"), "start", "-w", "-t", wait, "-D", str(data),
             "-l", str(folder / "postgres.log"), "-o", options], "start")  # fmt: skip
    return f"postgresql+psycopg://{DB_USER}:{quote(password, safe='')}@{HOST}:{port}"


def stop_postgres(folder: Path) -> None:
    """Stop the cluster in ``folder`` if it runs (fast shutdown: open sessions are closed)."""
    if postgres_running(folder):
        _pg([str(PG_BIN / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(folder / "data")],
            "stop")  # fmt: skip


def ensure_databases(base_uri: str, names: tuple[str, ...] = (RUNS_DB, AUTH_DB)) -> None:
    """Create the databases in ``names`` that do not exist yet.

    Args:
        base_uri: ``postgresql+psycopg://user:password@host:port`` (no database).
        names: the databases team mode needs.
    """
    import psycopg

    parsed = urlparse(base_uri.replace("postgresql+psycopg://", "postgresql://", 1))
    dsn = parsed._replace(path="/postgres").geturl()
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            for name in names:
                found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if found.fetchone() is None:
                    conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        where = f"{parsed.hostname}:{parsed.port}"
        raise NnopsError(f"PostgreSQL at {where}: {str(exc).strip().splitlines()[0]}") from None


def db_uri(base_uri: str, name: str) -> str:
    """The SQLAlchemy URI of database ``name`` on the server of ``base_uri``."""
    return f"{base_uri.rstrip('/')}/{name}"


# --- The authenticated MLflow server -------------------------------------------------------------


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


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
