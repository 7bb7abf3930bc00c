"""One register stage at a time per model, also across machines that share a tracking server.

An embedded sqlite store is serialised with a file lock (``tracking.store_lock``). Pipelines on
several machines share only the server, so the lease is an object the server creates atomically:
a registered model named ``<model>.register-lease``. Creating it fails while another pipeline
holds it (the registry's unique name), so exactly one pipeline at a time reads the champion,
gates against it and moves the alias. A lease older than ``stale_s`` (its holder died) is taken
over.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from nnops.errors import NnopsError
from nnops.tracking import store_lock
from nnops.warm import stage_pid

log = logging.getLogger(__name__)

SUFFIX = ".register-lease"


@contextmanager
def register_lease(
    uri: str, model_name: str, wait_s: float = 600.0, stale_s: float = 300.0
) -> Iterator[None]:
    """Hold the register lease of ``model_name`` in the store at ``uri``.

    Args:
        uri: the tracking URI (a sqlite store uses its file lock instead).
        model_name: the registered model the stage registers into.
        wait_s: how long to wait for another pipeline's lease.
        stale_s: a lease older than this is taken over (its holder died).
    """
    if not uri.startswith(("http://", "https://")):
        with store_lock(uri):
            yield
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    lease = model_name + SUFFIX
    holder = f"{socket.gethostname()} pid {stage_pid()}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lease, description=f"register lease held by {holder}")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise NnopsError(f"MLflow registry at {uri}: taking the register lease failed "
                                 f"({exc.error_code})") from None  # fmt: skip
        _expire(client, lease, stale_s)
        if time.monotonic() > deadline:
            raise NnopsError(
                f"MLflow registry at {uri}: another pipeline held the register lease of "
                f"{model_name!r} for over {wait_s:.0f} s (registered model {lease!r})"
            )
        time.sleep(0.5)
    log.debug("register lease of %s taken by %s", model_name, holder)
    try:
        yield
    finally:
        try:
            client.delete_registered_model(lease)
        except MlflowException as exc:
            log.warning("could not release the register lease %s (%s)", lease, exc.error_code)


def _expire(client: object, lease: str, stale_s: float) -> None:
    """Delete ``lease`` when it is older than ``stale_s`` (its holder died mid-register)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_registered_model(lease)  # type: ignore[attr-defined]
    except MlflowException:
        return  # released meanwhile
    age_s = time.time() - found.creation_timestamp / 1000
    if age_s > stale_s:
        log.warning("taking over the register lease %s, held %.0f s", lease, age_s)
        with suppress(MlflowException):
            client.delete_registered_model(lease)  # type: ignore[attr-defined]
