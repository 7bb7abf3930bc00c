"""Open the project's runs in the MLflow UI, or start a tracking server for a team.

``python -m nnops.ui`` (``make ui``) serves the UI on 127.0.0.1 against the store the pipeline
logs to, resolved exactly as the stages resolve it (``$MLFLOW_TRACKING_URI``, else
``mlflow.tracking_uri``, else the embedded ``sqlite:///<repo>/mlflow.db``).

``python -m nnops.ui server`` (``make server``) starts ``mlflow server`` with a SQL backend
store (a sqlite file) and an artifact root that clients reach through the server, so several
people or parallel queue workers can log at once; point the pipeline at it with
``export MLFLOW_TRACKING_URI=http://127.0.0.1:5000``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nnops.errors import NnopsError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
SERVER_DIR = "mlserver"


def ui_command(uri: str, host: str, port: int, artifacts: Path, workers: int = 1) -> list[str]:
    """Return the ``mlflow ui`` command line for a local store.

    Args:
        uri: the backend store URI (``sqlite:///...``).
        host: the interface to bind.
        port: the port to listen on.
        artifacts: where artifacts of experiments created from the UI go.
        workers: server worker processes.
    """
    return [
        sys.executable, "-m", "mlflow", "ui",
        "--app-name", "nnops",  # MLflow's app, its UI opening on model training (mlflow_app.py)
        "--backend-store-uri", uri,
        "--artifacts-destination", artifacts.resolve().as_uri(),
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip


def server_command(
    store: Path, host: str, port: int, workers: int = 2, backend_uri: str | None = None
) -> list[str]:
    """Return the ``mlflow server`` command line for a team tracking server.

    Args:
        store: the directory holding the sqlite backend (``mlflow.db``) and ``artifacts/``.
        host: the interface to bind.
        port: the port to listen on.
        workers: server worker processes.
        backend_uri: another SQLAlchemy backend (e.g. ``postgresql://...``) instead of sqlite.
    """
    store = store.resolve()
    backend = backend_uri or f"sqlite:///{store / 'mlflow.db'}"
    return [
        sys.executable, "-m", "mlflow", "server",
        "--app-name", "nnops",
        "--backend-store-uri", backend,
        "--artifacts-destination", (store / "artifacts").as_uri(),
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nnops.ui",
        description="MLflow UI on the project's store (default), or a team tracking server.",
    )
    parser.add_argument("mode", nargs="?", choices=("ui", "server"), default="ui")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (5000)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes")
    parser.add_argument("--params", default="params.yaml", help="the params file")
    parser.add_argument(
        "--store",
        default=None,
        help=f"server mode: directory for mlflow.db and artifacts/ (<repo>/{SERVER_DIR})",
    )
    parser.add_argument(
        "--backend-store-uri", default=None, help="server mode: a SQL database URI instead"
    )
    return parser


def _ui(args: argparse.Namespace) -> list[str] | None:
    from nnops.config import load_params
    from nnops.io import repo_root
    from nnops.tracking import connect

    params = load_params(args.params)
    # connect() creates or migrates an embedded store under the store lock, so the UI never
    # races a running stage over the schema; for a server URI it checks the server answers.
    uri = connect(params.mlflow)
    if not uri.startswith("sqlite:"):
        print(f"The project logs to {uri}: open it in a browser (no local UI needed).")
        return None
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    return ui_command(uri, args.host, args.port, repo_root() / "mlartifacts", args.workers or 1)


def _server(args: argparse.Namespace) -> list[str]:
    from nnops.io import repo_root

    store = Path(args.store) if args.store else repo_root() / SERVER_DIR
    store.mkdir(parents=True, exist_ok=True)
    cmd = server_command(store, args.host, args.port, args.workers or 2, args.backend_store_uri)
    print(
        f"MLflow tracking server on http://{args.host}:{args.port}, store {store}\n"
        f"Log the pipeline to it with: export MLFLOW_TRACKING_URI=http://{args.host}:{args.port}",
        flush=True,
    )
    return cmd


def main(argv: list[str] | None = None) -> int:
    """Start the UI or the server in the foreground; return an exit code.

    Args:
        argv: command-line arguments, for tests; defaults to ``sys.argv[1:]``.
    """
    from nnops.config import ConfigError
    from nnops.stage import quiet_environment

    quiet_environment()
    args = _parser().parse_args(argv)
    try:
        cmd = _server(args) if args.mode == "server" else _ui(args)
    except (ConfigError, NnopsError) as exc:
        print(f"{args.mode}: error: {exc}", file=sys.stderr)
        return 2
    if cmd is None:
        return 0
    # Replace this process so Ctrl-C and signals from a supervisor reach MLflow directly.
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
