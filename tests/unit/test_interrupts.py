"""Signals during a tracking-store write are held back until the write is done."""

import os
import signal

import pytest

from nnops import interrupts
from nnops.tracking import store_lock

pytestmark = pytest.mark.unit


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # as from a terminal: a background job of a non-interactive shell starts with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts.install()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_a_signal_inside_a_store_write_is_raised_after_the_write(handlers, tmp_path):
    done = []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(interrupts.Terminated) as info, store_lock(uri):
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("write finished")  # the handler ran, but did not raise here
    assert done == ["write finished"]
    assert info.value.signum == signal.SIGTERM and info.value.args == ("SIGTERM",)
    # the lock was released: another writer gets it at once
    with store_lock(uri):
        pass


def test_a_second_signal_during_the_same_write_is_raised_at_once(handlers):
    reached = []
    with pytest.raises(interrupts.Terminated) as info, interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append(2)
    assert reached == [1] and info.value.signum == signal.SIGTERM
    with interrupts.deferred():  # nothing is left held for the next write
        pass


def test_outside_a_write_a_signal_raises_where_it_lands(handlers):
    reached = []
    with pytest.raises(interrupts.Terminated):
        os.kill(os.getpid(), signal.SIGINT)
        reached.append(1)  # the handler raised before this line
    assert reached == []


def test_an_ignored_sigint_stays_ignored():
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        interrupts.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, saved)


def test_sigint_inside_an_epoch_commit_keeps_the_epoch_and_the_run_ends_killed(
    handlers, mlflow_store
):
    """The CI failure this guards against: Ctrl-C landed inside the sqlite commit of an epoch's
    metrics; the store stayed locked, the run could not be marked KILLED, and a traceback showed."""
    from mlflow import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from nnops.tracking import RunInfo
    from nnops.training_run import EpochLogger, end_interrupted

    client = MlflowClient(mlflow_store)
    run_id = client.create_run("0").info.run_id
    info = RunInfo(run_id, "0", mlflow_store)
    logger = EpochLogger(info)

    sent = []

    def interrupt_the_commit(_session):
        if not sent:
            sent.append(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs inside the commit

    event.listen(Session, "before_commit", interrupt_the_commit)
    try:
        with pytest.raises(interrupts.Terminated) as stopped:
            logger(1, {"loss": 0.5, "accuracy": 0.9})
    finally:
        event.remove(Session, "before_commit", interrupt_the_commit)
    assert sent
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1]
    end_interrupted(info, stopped.value, epoch=0)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["nnops.end_reason"] == "stopped by SIGINT at epoch 1"
