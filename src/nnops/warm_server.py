"""The warm server: preload the heavy libraries, fork a fresh child per stage, report its end.

The client side (when a stage hands itself over, the server key, the messages) is
:mod:`nnops.warm`; this module is what ``python -m nnops.warm serve`` runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nnops import warm
from nnops.distribute import quiet_native_stderr
from nnops.warm import DEFAULT_IDLE_S, PRELOAD, _private_dir, _recv, _send, runtime_dir


class Server:
    """Accept jobs on a Unix socket, fork a child per job, report each child's exit status.

    Args:
        home: the runtime directory.
        key: this server's key (its socket is ``<home>/<key>.sock``).
        idle_s: seconds without jobs after which it exits.
    """

    def __init__(self, home: Path, key: str, idle_s: float):
        self.home, self.key, self.idle_s = home, key, idle_s
        self.path = home / f"{key}.sock"
        self.jobs: dict[int, socket.socket] = {}  # child pid -> its client's connection
        self.last = time.monotonic()
        self.stopping = False
        self.ready = False  # every library of the preload list imported
        self.listener: socket.socket | None = None
        self.bound = -1
        self.lock_fd = -1
        self.wake_r, self.wake_w = os.pipe()

    def claim(self) -> bool:
        """Take the key's lock and bind the socket; False if another server holds it."""
        self.lock_fd = os.open(self.home / f"{self.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a server that died
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.bound = os.stat(self.path).st_ino  # the socket file this server owns
        self.listener.listen(64)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the pipe
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return True

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def preload(self, modules: Iterable[str]) -> None:
        """Import ``modules`` one by one, serving jobs that arrive in between."""
        os.environ.setdefault("MPLBACKEND", "Agg")
        for name in modules:
            if self.stopping:
                return
            try:
                with quiet_native_stderr():
                    __import__(name)
            except Exception as exc:  # a missing optional library: the child imports what it can
                print(f"preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            self.step(timeout=0)
        with contextlib.suppress(Exception):
            import tensorflow as tf

            tf.get_logger().setLevel("WARNING")
        self.ready = True
        print(f"ready: {len(sys.modules)} modules loaded", file=sys.stderr, flush=True)

    def serve_forever(self) -> None:
        """Serve until stopped or idle for ``idle_s`` with no job running."""
        while not (self.stopping and not self.jobs):
            self.step(timeout=1.0)
            if not self.jobs and time.monotonic() - self.last > self.idle_s:
                break
        self.close()

    def step(self, timeout: float) -> None:
        """Accept pending jobs, reap finished children, notice clients that went away."""
        assert self.listener is not None
        watched = [self.listener, self.wake_r, *self.jobs.values()]
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            ready = []
        if self.wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)
        if self.listener in ready and not self.stopping:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                conn, _ = self.listener.accept()
                self._take(conn)
        for pid, conn in list(self.jobs.items()):
            if conn in ready:  # a client never writes after its job: this is its end
                try:
                    gone = conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)  # its stage process was killed: so is it
        self._reap()

    def _take(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            job, fds = _recv(conn, want_fds=3)
        except (OSError, ValueError):
            conn.close()
            return
        if job is None or job.get("cmd") or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            if job and job.get("cmd") == "stop":
                self.stopping = True
            if job and job.get("cmd") == "ping":
                with contextlib.suppress(OSError):
                    _send(conn, {"pid": os.getpid(), "ready": self.ready, "jobs": len(self.jobs)})
            conn.close()
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(self, conn, job, fds)  # never returns
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        try:
            _send(conn, {"pid": pid})
        except OSError:
            os.kill(pid, signal.SIGKILL)
        self.jobs[pid] = conn
        self.last = time.monotonic()
        print(f"job {pid}: {job.get('argv0')} for stage process {job.get('stage_pid')} in "
              f"{job.get('cwd')}", file=sys.stderr, flush=True)  # fmt: skip

    def _reap(self) -> None:
        while self.jobs:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.jobs.pop(pid, None)
            if conn is None:
                continue
            report = {"status": status, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "maxrss_kb": usage.ru_maxrss}  # fmt: skip
            with contextlib.suppress(OSError):
                _send(conn, report)
            conn.close()
            print(f"job {pid}: ended, wait status {status}", file=sys.stderr, flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        """Remove the socket and release the lock."""
        if self.listener is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self.bound:  # not a newer server's
                    self.path.unlink()
            self.listener.close()
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                (self.home / f"{self.key}.lock").unlink()  # still held: no other server has it
            os.close(self.lock_fd)


def _run_child(server: Server, conn: socket.socket, job: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the stage process the job describes, run it, exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        ignored = job.get("sigint_ignored")
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
        for other in server.jobs.values():
            other.close()
        conn.close()
        assert server.listener is not None
        server.listener.close()
        for fd in (server.lock_fd, server.wake_r, server.wake_w):
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(job["cwd"])
        os.umask(int(job["umask"]))
        os.environ.clear()
        os.environ.update(job["env"])
        warm._stage_pid, warm._in_child = int(job["stage_pid"]), True
        _fresh_process_state()
        for stream, tty in zip((sys.stdout, sys.stderr), job["tty"][1:], strict=True):
            if tty:
                stream.reconfigure(line_buffering=True)
        code = _run_script(job["script"], job.get("argv0", job["script"]), job["args"])
    except BaseException:  # the set-up itself failed: say so where the stage's errors go
        import traceback

        traceback.print_exc()
    finally:
        os._exit(_finish(code))


def _fresh_process_state() -> None:
    """Undo what the server's imports cached that a new process would compute afresh."""
    import importlib
    import tempfile

    numpy = sys.modules.get("numpy")
    if numpy is not None:  # ``random`` reseeds itself at fork; numpy's global state does not
        numpy.random.seed(None)
    tempfile.tempdir = None  # TMPDIR of this stage, not of the server
    importlib.invalidate_caches()  # modules added to src/nnops since the server started


def _run_script(script: str, argv0: str, args: list[str]) -> int:
    """Run ``script`` as ``__main__`` with fresh nnops modules; return its exit code."""
    import runpy

    kept = (warm.__name__, __name__)  # this child's own state; every other module is fresh
    for name in [m for m in sys.modules if m.startswith("nnops.") and m not in kept]:
        del sys.modules[name]
    sys.argv = [argv0, *args]
    sys.path[0] = os.path.dirname(script)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            sys.stderr.write("KeyboardInterrupt\n")
            return 128 + signal.SIGINT
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 1
    return 0


def _finish(code: int) -> int:
    """What the interpreter does at exit: join threads, run atexit, flush the streams."""
    import atexit
    import threading

    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code & 0xFF


# --- Command line: python -m nnops.warm serve|status|stop ----------------------------------


def ping(path: Path, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Ask the server at socket ``path`` how it is: ``{"pid", "ready", "jobs"}``; None if none.

    Args:
        path: a server's socket.
        timeout_s: how long to wait for the answer (a server answers between two imports).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
        _send(sock, {"cmd": "ping"})
        reply, _ = _recv(sock)
        return reply
    except OSError:
        return None
    finally:
        sock.close()


def servers(home: Path) -> dict[Path, dict[str, Any]]:
    """The servers in ``home`` that answer, by socket, with their state (see :func:`ping`)."""
    found = {}
    for path in sorted(home.glob("*.sock")):
        state = ping(path)
        if state is not None:
            found[path] = state
    return found


def stop_servers(home: Path, wait_s: float = 10.0) -> int:
    """Ask every server in ``home`` to stop once its running stages end; return how many.

    Args:
        home: the runtime directory.
        wait_s: how long to wait for them to go.
    """
    stopped = 0
    for path in servers(home):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            _send(sock, {"cmd": "stop"})
            stopped += 1
        except OSError:
            pass
        finally:
            sock.close()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(p.exists() for p in home.glob("*.sock")):
        time.sleep(0.1)
    return stopped


def serve(key: str) -> int:
    """Run the server for ``key`` until it is stopped or idle (stages start it themselves).

    Args:
        key: the server key (``warm.server_key()`` of the stage that started it).
    """
    home = _private_dir(runtime_dir())
    server = Server(home, key, float(os.environ.get("NNOPS_WARM_IDLE_S", DEFAULT_IDLE_S)))
    try:
        if not server.claim():
            return 0  # another server has this key
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return 0
        raise
    print(f"warm server {key} pid {os.getpid()} listening on {server.path}", file=sys.stderr)
    preload = os.environ.get("NNOPS_WARM_PRELOAD")
    server.preload(preload.split(",") if preload else PRELOAD)
    server.serve_forever()
    return 0


def main(argv: list[str] | None = None, prog: str = "nnops warm") -> int:
    """``nnops warm status | stop``: list or stop this user's warm servers.

    Args:
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
        prog: the program name in messages.
    """
    import argparse

    about = "List or stop the warm servers that run stages with their libraries imported."
    parser = argparse.ArgumentParser(prog=prog, description=about)
    parser.add_argument("command", choices=("status", "stop"))
    args = parser.parse_args(argv)
    home = runtime_dir()
    if args.command == "status":
        alive = servers(home) if home.is_dir() else {}
        print(f"{len(alive)} warm server(s) in {home}")
        for path, state in alive.items():
            what = "ready" if state.get("ready") else "loading libraries"
            print(f"  {path.stem}: pid {state.get('pid')}, {what}, {state.get('jobs')} stage(s) "
                  f"running; log {path.with_suffix('.log')}")  # fmt: skip
        return 0
    count = stop_servers(home) if home.is_dir() else 0
    print(f"stopped {count} warm server(s) in {home}")
    return 0


if __name__ == "__main__":  # python -m nnops.warm_server serve KEY (started by nnops.warm)
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        from nnops import warm_server

        sys.exit(warm_server.serve(sys.argv[2]))
    sys.exit(main())
