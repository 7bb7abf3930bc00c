"""Keras callbacks of the training loops: epoch order, the one epoch history, backup, sinks.

Every loop drives these once per epoch. ``EpochHistory`` is the only place an epoch's record is
made; the backup saves and restores that history, and the sinks (MLflow, a tuning trial) are
handed the records it made.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nnops.errors import NnopsError
from nnops.interrupts import deferred
from nnops.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")

EpochSinkFn = Callable[[int, dict[str, float]], None]
"""Called with a finished epoch's 1-based number and its metrics (e.g. an MLflow logger)."""


def non_finite_losses(record: Mapping[str, Any]) -> list[str]:
    """The losses (``loss``, ``val_loss``) of an epoch's record that are NaN or infinite: the fit
    diverged, and every later epoch stays so.

    Args:
        record: the epoch's metrics, as Keras logs them.
    """
    return [k for k in ("loss", "val_loss") if k in record and not math.isfinite(float(record[k]))]


class EpochOrder(keras.callbacks.Callback):
    """Set the epoch the input pipeline shuffles for, and the dropout generators' position.

    A resumed run starts at a later epoch in a fresh process; this makes its epochs draw the same
    batches and dropout masks as an uninterrupted run would.

    Args:
        epoch: the variable ``loops.epoch_batches`` reads.
        steps: optimizer steps per epoch.
    """

    def __init__(self, epoch: tf.Variable, steps: int):
        super().__init__()
        self.epoch = epoch
        self.steps = steps

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.epoch.assign(epoch)
        # A backup does not hold the seed generators' state: put each where an uninterrupted
        # run is at this epoch (each training step advances it by one).
        for layer in self.model.layers:
            gen = getattr(layer, "seed_generator", None)
            if gen is not None:
                state = gen.state.numpy()
                gen.state.assign(np.array([state[0], epoch * self.steps], dtype=state.dtype))


class EpochHistory(keras.callbacks.Callback):
    """The per-epoch history of a training run: one record per finished epoch, from 1.

    A record holds the epoch number, the loop's metrics and the optimizer's learning rate.
    ``first_epoch`` is the number of epochs a resumed run had already done (``Backup`` sets it
    with the records it restores).
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, float]] = []
        self.first_epoch = 0

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        logs = logs or {}
        record = {k: float(v) for k, v in logs.items() if k in HISTORY_KEYS}
        lr = self.model.optimizer.learning_rate
        record["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        self.records = [*self.records[:epoch], {"epoch": epoch + 1, **record}]


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also keeps the epoch history and early stopping's state.

    Each epoch's record (and early stopping's best weights) is written before Keras commits the
    weights and epoch number, so a kill between the two only makes the resumed run repeat that
    epoch. The backup is left in place; the stage clears it after success.

    Args:
        backup_dir: where the state lives (kept by DVC across runs: ``persist: true``).
        steps: optimizer steps per epoch.
        history: the run's history, saved each epoch and restored on resume; it must come
            before this callback in the callback list.
        early: the run's EarlyStopping callback, whose state is kept too.
    """

    def __init__(
        self,
        backup_dir: str | Path,
        steps: int,
        history: EpochHistory,
        early: keras.callbacks.EarlyStopping | None = None,
    ):
        # double_checkpoint: a kill while the weights file is written falls back to the last one.
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        self.steps = steps
        self.history_path = Path(backup_dir) / "history.json"
        self.history = history
        self.early = early

    def _best_path(self, epoch: int) -> Path:
        return Path(self.backup_dir) / f"best-epoch-{epoch}.npz"

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        # The epoch to resume at, as BackupAndRestore saved it beside the weights.
        meta = Path(self.backup_dir) / "training_metadata.json"
        epoch = int(read_json(meta)["epoch"]) if meta.exists() else 0
        # Keras writes the weights, then the epoch number: a kill between the two leaves weights
        # one epoch ahead of the number. The optimizer's step count is saved with the weights.
        done, rest = divmod(int(self.model.optimizer.iterations.numpy()), self.steps)
        if rest == 0 and done == epoch + 1:
            log.info("%s: the weights are from epoch %d (its number was not saved)", meta, done)
            epoch = done
            self.model._initial_epoch = done  # where model.fit resumes, as the base class sets it
        saved = read_json(self.history_path) if epoch and self.history_path.exists() else []
        if len(saved) < epoch:
            raise NnopsError(
                f"{self.history_path}: holds {len(saved)} epoch(s) but the backup in "
                f"{self.backup_dir} resumes after epoch {epoch}; delete {self.backup_dir} "
                "to start over"
            )
        self.history.records = saved[:epoch]
        self.history.first_epoch = epoch
        if epoch:
            log.info("resuming from %s after epoch %d", self.backup_dir, epoch)
            if self.early is not None:
                self._restore_early_stopping()

    def _restore_early_stopping(self) -> None:
        """Replay the saved epochs through EarlyStopping and give it back its best weights."""
        early = self.early
        for record in self.history.records:
            early.on_epoch_end(int(record["epoch"]) - 1, dict(record))
        if early.restore_best_weights and early.best_weights is not None:
            path = self._best_path(early.best_epoch + 1)
            if not path.exists():
                raise NnopsError(f"{path}: missing; delete {self.backup_dir} to start over")
            with np.load(path, allow_pickle=False) as npz:
                early.best_weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        self.model.stop_training = False

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        # Ctrl-C or SIGTERM is held back until the backup is written (milliseconds), so it is
        # never cut off halfway by an exception; double_checkpoint still covers a kill.
        with deferred():
            self._save(epoch, logs)

    def _save(self, epoch: int, logs: Mapping[str, Any] | None) -> None:
        write_json(self.history_path, self.history.records)
        early = self.early
        best_now = early is not None and early.restore_best_weights and early.best_epoch == epoch
        if best_now:
            with atomic_path(self._best_path(epoch + 1)) as tmp, tmp.open("wb") as fh:
                np.savez(fh, *early.best_weights)
        super().on_epoch_end(epoch, logs)
        if best_now:  # committed: older best weights are no longer needed
            for old in Path(self.backup_dir).glob("best-epoch-*.npz"):
                if old != self._best_path(epoch + 1):
                    old.unlink()


class EpochSink(keras.callbacks.Callback):
    """Hand each finished epoch's record from ``history`` to every sink.

    Args:
        history: the run's history (earlier in the callback list).
        sinks: each called with the 1-based epoch number and its metrics.
    """

    def __init__(self, history: EpochHistory, sinks: Sequence[EpochSinkFn]):
        super().__init__()
        self.history = history
        self.sinks = list(sinks)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        record = self.history.records[epoch]
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        for sink in self.sinks:
            sink(epoch + 1, dict(metrics))
