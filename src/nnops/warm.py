"""Warm stage processes: import TensorFlow, MLflow and Great Expectations once, not per stage.

Most of a stage's time on small data is start-up: each stage process imports TensorFlow (~3 s),
MLflow (~2 s) or Great Expectations (~3.5 s) before it does a second of work. A warm server is
a local process that has imported those libraries; each stage that DVC starts hands its command
line, working directory, environment and standard streams to the server over a Unix socket, and
the server forks a fresh child that runs the stage script exactly as ``python <script>`` would.

- Each stage still runs in a process of its own (a fork, so nothing a stage does is seen by the
  next), and the nnops code is imported fresh in each child: an edit takes effect at once.
- The stage process DVC started stays: it relays signals to the child (Ctrl-C, SIGTERM), exits
  with the child's exit status (or dies of the same signal), and is the process the MLflow run
  names (``nnops.pid``). If it is killed, the server kills the child.
- The first stage that finds no server starts one in the background and runs cold; the next
  ones are warm. A server is keyed by the interpreter, the installed packages, this file and the
  environment variables read at import time (``TF_*``, ``CUDA_*``, ``PYTHON*``, ...), so a
  change there starts a new one. A server exits after ``NNOPS_WARM_IDLE_S`` seconds (600) idle.
- ``NNOPS_WARM=0`` turns it off; ``NNOPS_WARM=1`` turns it on where it is off by default (off
  on a machine with an NVIDIA device node, under ``TF_CONFIG`` multi-worker training, with
  ``python -X importtime``, and off Linux). ``nnops warm status|stop`` lists or stops
  the servers; their logs are ``<NNOPS_WARM_DIR>/<key>.log``. The server is
:mod:`nnops.warm_server`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The libraries a stage may import, in the order the pipeline's stages first need them, so that
# a job arriving while the server is still loading gets what is loaded so far.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "pydantic",
    "yaml",
    "jinja2",
    "great_expectations",
    "scipy.stats",
    "sklearn.metrics",
    "sklearn.model_selection",
    "matplotlib",
    "tensorflow",
    "keras",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.keras",
)

# Environment variables that the preloaded libraries (or the interpreter) read when imported:
# a server imported them with its own values, so a different value needs another server.
KEY_PREFIXES = ("TF_", "CUDA_", "XLA_", "KERAS_", "OMP_", "MKL_", "OPENBLAS_", "PYTHON", "LD_",
                "NVIDIA_", "GX_", "MPL", "LC_")  # fmt: skip
KEY_NAMES = ("HOME", "LANG", "TZ", "DO_NOT_TRACK", "GIT_PYTHON_REFRESH", "MLFLOW_DISABLE_TELEMETRY",
             "MLFLOW_LOGGING_LEVEL", "MLFLOW_CONFIGURE_LOGGING", "NNOPS_WARM_PRELOAD")  # fmt: skip

DEFAULT_IDLE_S = 600.0
_HEADER = struct.Struct("!I")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)  # fmt: skip

log = logging.getLogger(__name__)

_stage_pid: int | None = None  # set in a warm child: the pid of the stage process DVC started
_in_child = False
last_child: dict[str, float] = {}  # the last warm child's CPU seconds and peak RSS (for bench/)


def stage_pid() -> int:
    """The pid of this stage's process as DVC and the user see it (the client of a warm child)."""
    return _stage_pid or os.getpid()


# --- When and where ------------------------------------------------------------------------


def enabled(env: dict[str, str] | None = None) -> bool:
    """Whether stages hand themselves to a warm server here (see the module docstring).

    Args:
        env: the environment to judge (default ``os.environ``).
    """
    env = os.environ if env is None else env
    setting = env.get("NNOPS_WARM", "auto").strip().lower()
    if setting in ("0", "false", "no", "off") or _in_child:
        return False
    if not sys.platform.startswith("linux") or not hasattr(socket, "send_fds"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    if env.get("TF_CONFIG") or env.get("PYTHONPROFILEIMPORTTIME") or "importtime" in sys._xoptions:
        return False
    return not any(Path("/dev").glob("nvidia[0-9]*"))  # untried with a GPU: off unless asked


def runtime_dir(env: dict[str, str] | None = None) -> Path:
    """The directory holding the servers' sockets, locks and logs (only this user can enter).

    Args:
        env: the environment (default ``os.environ``): ``NNOPS_WARM_DIR`` or
            ``$XDG_RUNTIME_DIR/nnops-warm`` or ``/tmp/nnops-warm-<uid>``.
    """
    env = os.environ if env is None else env
    if env.get("NNOPS_WARM_DIR"):
        return Path(env["NNOPS_WARM_DIR"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "nnops-warm"
    return Path("/tmp") / f"nnops-warm-{os.getuid()}"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path}: not a private directory of this user")
    return path


def server_key(env: dict[str, str] | None = None) -> str:
    """What a server must share with a stage to run it: interpreter, packages, this file, and
    the import-time environment.

    Args:
        env: the environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    site: list[str] = []
    for entry in sys.path:
        if entry.endswith("site-packages") and os.path.isdir(entry):
            site.append(f"{entry}:{os.stat(entry).st_mtime_ns}")  # a pip install touches it
    chosen = {k: v for k, v in env.items() if k.startswith(KEY_PREFIXES) or k in KEY_NAMES}
    identity = {
        "python": [sys.executable, sys.version, sys.prefix],
        "site": site,
        "flags": [repr(sys.flags), sys.warnoptions, sorted(sys._xoptions.items())],
        "server": [_file_hash(Path(__file__).with_name(n)) for n in ("warm.py", "warm_server.py")],
        "env": sorted(chosen.items()),
    }
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


# --- Messages: a 4-byte length, then JSON --------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any], fds: Iterable[int] = ()) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    fds = list(fds)
    if fds:
        sent = socket.send_fds(sock, [payload], fds)
        payload = payload[sent:]
    if payload:
        sock.sendall(payload)


def _recv(sock: socket.socket, want_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """Read one message (None at end of stream) and any descriptors sent with it."""
    fds: list[int] = []
    buf = b""
    need = _HEADER.size
    while len(buf) < need:
        if want_fds and not fds:
            chunk, fds, _, _ = socket.recv_fds(sock, 65536, want_fds)
        else:
            chunk = sock.recv(65536)
        if not chunk:  # the other side closed mid-message: nothing usable arrived
            for fd in fds:
                os.close(fd)
            return None, []
        buf += chunk
        if len(buf) >= _HEADER.size:
            need = _HEADER.size + _HEADER.unpack_from(buf)[0]
    return json.loads(buf[_HEADER.size : need]), fds


# --- The client: the stage process DVC started ---------------------------------------------


def delegate(script: str, args: list[str]) -> int | None:
    """Run this stage in a warm child and return its exit status; None to run it here (cold).

    Returns None when warm starts are off, no server is up (one is then started for the next
    stage) or the server could not take the job. Once the child runs, this process relays
    signals to it and returns its status; a child killed by a signal kills this process the
    same way.

    Args:
        script: the stage script's path (``sys.argv[0]``).
        args: its arguments (``sys.argv[1:]``).
    """
    if not enabled():
        return None
    try:
        home = _private_dir(runtime_dir())
        key = server_key()
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(home / f"{key}.sock"))
    except OSError:
        sock.close()
        if start_server(home, key):
            log.info("started a warm server: the next stages start without importing "
                     "TensorFlow or MLflow again (NNOPS_WARM=0 turns this off)")  # fmt: skip
        return None
    with sock:
        return _run_remote(sock, script, args)


def _run_remote(sock: socket.socket, script: str, args: list[str]) -> int | None:
    sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    job = {
        "script": os.path.abspath(script),
        "argv0": script,
        "args": list(args),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": _current_umask(),
        "sigint_ignored": sigint_ignored,
        "stage_pid": os.getpid(),
        "tty": [os.isatty(fd) for fd in (0, 1, 2)],
    }
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        _send(sock, job, fds=(0, 1, 2))
        reply, _ = _recv(sock)
    except OSError:
        return None
    if not reply or "pid" not in reply:
        return None  # the server closed (it was stopping): run cold
    child = int(reply["pid"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in _FORWARDED:
        if signum == signal.SIGINT and sigint_ignored:
            continue
        signal.signal(signum, forward)
    while True:
        try:
            reply, _ = _recv(sock)
            break
        except InterruptedError:
            continue
        except OSError:
            reply = None
            break
    if not reply or "status" not in reply:  # the server died: so must the stage it was running
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        while os.path.exists(f"/proc/{child}"):  # Linux only, as warm stages are
            time.sleep(0.05)
        print(f"{Path(script).stem}: the warm server stopped while the stage ran (NNOPS_WARM=0 "
              "runs stages without it)", file=sys.stderr)  # fmt: skip
        return 1
    global last_child
    last_child = {k: reply[k] for k in ("cpu_s", "maxrss_kb") if k in reply}
    status = int(reply["status"])
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.waitstatus_to_exitcode(status)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def start_server(home: Path, key: str) -> bool:
    """Start a detached server for ``key`` (a second one for the same key exits at once).

    Returns whether one was started.

    Args:
        home: the runtime directory.
        key: the server key of this environment.
    """
    import subprocess

    path = home / f"{key}.log"
    with contextlib.suppress(OSError):
        if path.stat().st_size > 1 << 20:  # keep a log of the last servers, not of all
            path.unlink()
    log_file = open(path, "ab")  # noqa: SIM115 (handed to the child)
    try:
        subprocess.Popen(
            [sys.executable, "-m", "nnops.warm_server", "serve", key],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # not in the stage's process group: a Ctrl-C stops stages
            close_fds=True,
            cwd=str(home),
        )
    except OSError:
        return False
    finally:
        log_file.close()
    return True
