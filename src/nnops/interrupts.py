"""SIGINT and SIGTERM as exceptions, held back while a tracking-store write is in flight.

A signal that lands inside a sqlite commit leaves the store's transaction open, so the run
cannot then be marked KILLED ("database is locked") and SQLAlchemy prints a traceback. Writes
run inside ``deferred()``: a signal that arrives there is raised as soon as the write is done.
A second signal during the same write is raised at once, so a stuck write can still be stopped.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending: int | None = None


class Terminated(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised like Ctrl-C so that ``finally`` blocks and run bookkeeping happen.

    Args:
        signum: the signal received; ``args[0]`` is its name (``SIGTERM``).
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum: int, _frame: object) -> None:
    global _pending
    if _depth and _pending is None:
        _pending = signum
        return
    _pending = None  # raised now; the held one is not raised again
    raise Terminated(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> None:
    """Raise ``Terminated`` for SIGINT and SIGTERM in this process (main thread only)."""
    if not _in_main_thread():
        return
    signal.signal(signal.SIGTERM, _handler)
    # A background job of a non-interactive shell starts with SIGINT ignored: keep it so.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back until the block ends, then raise the first one received."""
    global _depth, _pending
    if not _in_main_thread():  # signals are delivered to the main thread only
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            raise Terminated(signum)
