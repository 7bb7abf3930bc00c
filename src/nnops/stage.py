"""What every stage entry script shares: quiet defaults, logging, params, clean failures."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from nnops.config import ConfigError, Params, load_params
from nnops.errors import NnopsError
from nnops.interrupts import Terminated, install
from nnops.secrets import RedactingFilter, redact_text

log = logging.getLogger("nnops")

# No telemetry and no noisy accelerator probing unless the user asks for it.
QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "GIT_PYTHON_REFRESH": "quiet",
}


# Every stage output is in DVC's cache (dvc.yaml), so what DVC removed before a failed stage
# comes back from the last successful run recorded in dvc.lock.
RESTORE_HINT = (
    "nothing is lost: `dvc checkout` brings back the outputs of the last successful run "
    "(README, 'When a stage fails')"
)
# A file system that refuses a write: a clear line naming the file, not a traceback.
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def refused_write(exc: OSError) -> str:
    """One line for a write the file system refused: the file when the error names it; for a
    full disk without one (a write to an open file names none), the folder and the space left.

    Args:
        exc: an ``OSError`` whose errno is in ``UNWRITABLE``.
    """
    why = exc.strerror or str(exc)
    if exc.filename:
        return f"{redact_text(str(exc.filename))}: {why}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        import shutil

        here = Path.cwd()
        free = shutil.disk_usage(here).free
        left = f"{free / 2**20:.1f} MiB free there"
        return f"{why} while writing under {here} ({left}); free some space and rerun"
    return why


def restore_hint(stage: str) -> str:
    """How to get the stage's earlier outputs back, or that it had none (``dvc.lock`` holds no
    successful run of it yet)."""
    try:
        import yaml

        with open("dvc.lock", encoding="utf-8") as fh:
            recorded = stage in ((yaml.safe_load(fh) or {}).get("stages") or {})
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        recorded = False
    if recorded:
        return RESTORE_HINT
    return f"no earlier run of {stage} is recorded in dvc.lock, so no earlier output was lost"


def quiet_environment() -> None:
    """Set the project's defaults for telemetry and TensorFlow log noise (user values win)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def configure_logging(level: int = logging.INFO) -> None:
    """Log ``nnops`` messages to stderr as ``stage: message`` lines.

    Args:
        level: the logging level for the ``nnops`` logger.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())  # no URL credentials or tokens in any log line
    root = logging.getLogger("nnops")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # SQLAlchemy logs, with a traceback, the errors it swallows while closing a connection, e.g.
    # when SIGTERM lands inside a store query. The stage reports the stop itself, in one line;
    # errors that matter reach nnops as exceptions.
    logging.getLogger("sqlalchemy").setLevel(logging.CRITICAL)


def start_command(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Quiet the environment, set up logging and parse a command's arguments.

    Every entry point (stages and ``nnops`` subcommands) starts this way.

    Args:
        parser: the command's argument parser.
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
    """
    quiet_environment()
    configure_logging()
    install()  # SIGINT/SIGTERM raise Terminated, held back during tracking-store writes
    return parser.parse_args(argv)


def run_stage(
    name: str,
    main: Callable[[argparse.Namespace, Params], None],
    parser: argparse.ArgumentParser,
    argv: list[str] | None = None,
) -> int:
    """Parse arguments, load params once, run ``main`` and turn failures into exit codes.

    Args:
        name: the stage name, used in messages.
        main: the stage body.
        parser: the stage's argument parser (``--params`` is added here).
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
    """
    parser.add_argument("--params", default="params.yaml", help="the params file")
    args = start_command(parser, argv)
    try:
        params = load_params(args.params)  # bad params fail here, before any hand-over
        if argv is None:  # a stage process DVC started: a warm server may run it (nnops.warm)
            from nnops.warm import delegate

            code = delegate(sys.argv[0], sys.argv[1:])
            if code is not None:
                return code
        main(args, params)
    except (ConfigError, NnopsError) as exc:
        print(f"{name}: error: {redact_text(str(exc))}", file=sys.stderr)
        print(f"{name}: {restore_hint(name)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in UNWRITABLE:
            raise
        print(f"{name}: error: {refused_write(exc)}", file=sys.stderr)
        print(f"{name}: {restore_hint(name)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return stopped(name, exc, restore_hint(name))
    return 0


def stopped(prog: str, exc: KeyboardInterrupt, what_is_left: str) -> int:
    """Say in one line that Ctrl-C or SIGTERM stopped ``prog`` and what is left; return the
    shell's exit status for that signal (130, 143).

    Args:
        prog: the stage or command.
        exc: the interrupt (``Terminated`` carries the signal number).
        what_is_left: what the user has after the stop.
    """
    signum = getattr(exc, "signum", signal.SIGINT)
    print(f"{prog}: stopped by {signal.Signals(signum).name}; {what_is_left}", file=sys.stderr)
    return 128 + signum


__all__ = ["Terminated", "run_stage", "start_command"]
