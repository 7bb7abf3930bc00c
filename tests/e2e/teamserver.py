"""A throwaway team server for e2e tests: PostgreSQL 15 + MLflow's basic-auth app.

Started once per session through ``nnops.team.up`` (the code ``make team-up`` runs) in a private
folder under the system temp directory (PostgreSQL runs as an unprivileged account when the tests
run as root, and that account must reach the folder), and stopped at the end. Import the fixture
into a test module with ``from teamserver import team_server``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port, project_env
from nnops import team


@dataclass
class TeamServer:
    """The running server and what tests need to reach, kill and restart it."""

    url: str
    username: str
    password: str
    dirs: team.TeamDirs
    backend_uri: str
    port: int

    def env(self, **extra: str) -> dict[str, str]:
        """A project environment that logs to the server with the admin's credentials."""
        signed_in = {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }
        return project_env(**{**signed_in, **extra})

    def kill(self) -> None:
        """Kill the server's whole process group at once (SIGKILL: no clean shutdown)."""
        pid = int(self.dirs.server_pid.read_text())
        self.dirs.server_pid.unlink()
        with suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def restart(self) -> None:
        """Start the server again on the same port, database and artifact folder."""
        team.start_server(self.dirs, self.backend_uri, self.port, workers=2)

    def client(self):
        """An MLflow client signed in as the admin (credentials from the environment)."""
        import mlflow

        os.environ["MLFLOW_TRACKING_USERNAME"] = self.username
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.password
        return mlflow.MlflowClient(self.url)


@pytest.fixture(scope="session")
def team_server() -> Iterator[TeamServer]:
    """PostgreSQL in a fresh cluster and the authenticated MLflow server on free ports."""
    root = Path(tempfile.mkdtemp(prefix="nnops-team-"))
    root.chmod(0o711)  # PostgreSQL's account must traverse it to reach pg/
    dirs = team.TeamDirs(root)
    previous = os.environ.pop("NNOPS_DB_URI", None)  # always a throwaway cluster here
    port = free_port()
    try:
        started = team.up(dirs, port, free_port(), workers=2)
    except team.NnopsError as exc:
        team.down(dirs)
        pytest.fail(f"team server did not start: {exc}")
    try:
        yield TeamServer(
            started.url, started.username, started.password, dirs, started.backend_uri, port
        )
    finally:
        team.down(dirs)
        if previous is not None:
            os.environ["NNOPS_DB_URI"] = previous
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        shutil.rmtree(root, ignore_errors=True)
