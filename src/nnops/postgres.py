"""A local PostgreSQL cluster for team mode: initialised in a folder, bound to 127.0.0.1.

PostgreSQL refuses to run as root; when nnops runs as root (containers, CI machines) the cluster
runs as the unprivileged ``nnopspg`` account, created on first use. Connections need a password
(scram-sha-256) over TCP on 127.0.0.1 or the cluster's own unix socket folder.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import quote, urlparse

from nnops.errors import NnopsError

PG_ROOT = Path("/usr/lib/postgresql")  # Debian/Ubuntu: one <major>/bin per installed version
PG_OS_USER = "nnopspg"  # the unprivileged account PostgreSQL runs as when we are root
DB_USER = "nnops"
RUNS_DB, AUTH_DB = "mlflow", "mlflow_auth"  # two databases: each keeps its own alembic history
HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0


def pg_bin() -> Path:
    """PostgreSQL's programs: ``$NNOPS_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``."""
    if os.environ.get("NNOPS_PG_BIN"):
        return Path(os.environ["NNOPS_PG_BIN"])
    found = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists() and p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    if not found:
        raise NnopsError(
            f"PostgreSQL: no initdb under {PG_ROOT}/*/bin; install PostgreSQL (Debian: "
            "postgresql) or set NNOPS_PG_BIN, or point NNOPS_DB_URI at a running server"
        )
    return found[-1]


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
    cmd = _as_pg_user([str(pg_bin() / "pg_ctl"), "status", "-D", str(data)])
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
    bin_dir = pg_bin()
    if not (bin_dir / "initdb").exists():
        raise NnopsError(f"PostgreSQL: {bin_dir}/initdb not found (set NNOPS_PG_BIN)")
    folder.mkdir(parents=True, exist_ok=True)
    _ensure_pg_account(folder)
    data, sock = folder / "data", folder / "run"
    if not (data / "PG_VERSION").exists():
        pwfile = folder / "initdb.pw"
        pwfile.write_text(password + "\n")
        _ensure_pg_account(folder)
        try:
            _pg([str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER, "--pwfile", str(pwfile),
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
        _pg([str(bin_dir / "pg_ctl"), "start", "-w", "-t", wait, "-D", str(data),
             "-l", str(folder / "postgres.log"), "-o", options], "start")  # fmt: skip
    return f"postgresql+psycopg://{DB_USER}:{quote(password, safe='')}@{HOST}:{port}"


def stop_postgres(folder: Path) -> None:
    """Stop the cluster in ``folder`` if it runs (fast shutdown: open sessions are closed)."""
    if postgres_running(folder):
        _pg([str(pg_bin() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(folder / "data")],
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
