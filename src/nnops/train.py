"""Training: the input pipeline, resumable callbacks and the fit loops.

Single-device training (``train.input_pipeline``): ``in_graph`` (default) runs a compiled loop
that slices each batch from tensors held in memory, ``steps_per_execution`` steps per call;
``tf_data`` and ``numpy`` use ``keras.Model.fit`` with ``steps_per_execution``. The distributed
modes (``mirrored``, ``multi_worker``) use TensorFlow's custom training loop with
``strategy.run``, because Keras 3's ``fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585) and with ``steps_per_execution > 1`` on more than one replica. All
loops drive the same Keras callbacks once per epoch.

The batch order of epoch ``e`` is a pure function of ``(train.seed, e)``, and the backup holds
the weights, the optimizer state and the epoch history, so a killed run resumed from its last
completed epoch ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nnops.config import TrainParams
from nnops.distribute import Runtime
from nnops.errors import NnopsError
from nnops.io import atomic_path, read_json, write_json
from nnops.model import build_model, compile_model, preprocessing_layer, steps_per_epoch

log = logging.getLogger(__name__)

EMPTY_MARK = "EMPTY"  # keeps the cleared backup folder a non-empty DVC output
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


@dataclass(frozen=True)
class TrainData:
    """Raw (unscaled) features and class indices for training and validation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    n_classes: int
    preprocessing: Mapping[str, Any]


@dataclass
class TrainResult:
    """What a fit produced besides the model; epochs are numbered from 1."""

    history: list[dict[str, float]]
    start_epoch: int
    stopped_early: bool
    steps_per_execution: int
    best_epoch: int | None = None


def epoch_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: tf.Variable | int,
    shuffle: bool = True,
    shard: tuple[int, int, int] | None = None,
) -> tf.data.Dataset:
    """Stream one epoch of batches in an order that depends only on ``(seed, epoch)``.

    ``epoch`` is read when an iterator starts, so one dataset serves every epoch: the
    ``EpochOrder`` callback sets it at the beginning of each epoch.

    Args:
        x: features.
        y: labels.
        batch_size: the global batch size.
        seed: the shuffle seed.
        epoch: the 0-based epoch whose order to produce (usually a variable).
        shuffle: shuffle; otherwise keep the array order.
        shard: ``(first replica, replicas of this input pipeline, replicas in all)``: split each
            global batch across replicas, yield this pipeline's slices in turn, each with the
            size of the global batch it came from.
    """
    n = len(x)
    steps = math.ceil(n / batch_size)
    xs, ys = tf.constant(x), tf.constant(y)

    def order(_: tf.Tensor) -> tf.data.Dataset:
        if shuffle:
            key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
            idx = tf.argsort(tf.random.stateless_uniform([n], seed=key))
        else:
            idx = tf.range(n)
        return tf.data.Dataset.from_tensor_slices(idx).batch(batch_size)

    ds = tf.data.Dataset.from_tensors(0).flat_map(order)
    if shard is None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
        ds = ds.map(
            lambda i: (tf.gather(xs, i), tf.gather(ys, i)), num_parallel_calls=tf.data.AUTOTUNE
        )
        return ds.prefetch(tf.data.AUTOTUNE)
    first, local, total = shard

    def split(idx: tf.Tensor) -> tf.data.Dataset:
        size = tf.cast(tf.size(idx), tf.float32)
        replicas = tf.data.Dataset.range(local)
        return replicas.map(lambda r: (idx[first + tf.cast(r, tf.int32) :: total], size))

    ds = ds.flat_map(split).map(
        lambda i, size: (tf.gather(xs, i), tf.gather(ys, i), size),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


class EpochOrder(keras.callbacks.Callback):
    """Set the epoch the input pipeline shuffles for, and the dropout generators' position.

    A resumed run starts at a later epoch in a fresh process; this makes its epochs draw the same
    batches and dropout masks as an uninterrupted run would.

    Args:
        epoch: the variable ``epoch_batches`` reads.
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


def _record(logs: Mapping[str, Any], optimizer: keras.optimizers.Optimizer) -> dict[str, float]:
    out = {k: float(v) for k, v in logs.items() if k in HISTORY_KEYS and k != "learning_rate"}
    out["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    return out


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that also keeps the per-epoch history and early stopping's state.

    Each epoch's record (and early stopping's best weights) is written before Keras commits the
    weights and epoch number, so a kill between the two only makes the resumed run repeat that
    epoch. The backup is left in place; the stage clears it after success.

    Args:
        backup_dir: where the state lives (kept by DVC across runs: ``persist: true``).
        steps: optimizer steps per epoch.
        early: the run's EarlyStopping callback, whose state is kept too.
    """

    def __init__(
        self,
        backup_dir: str | Path,
        steps: int,
        early: keras.callbacks.EarlyStopping | None = None,
    ):
        # double_checkpoint: a kill while the weights file is written falls back to the last one.
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        self.steps = steps
        self.history_path = Path(backup_dir) / "history.json"
        self.history: list[dict[str, float]] = []
        self.first_epoch = 0
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
        self.history = saved[:epoch]
        self.first_epoch = epoch
        if epoch:
            log.info("resuming from %s after epoch %d", self.backup_dir, epoch)
            if self.early is not None:
                self._restore_early_stopping()

    def _restore_early_stopping(self) -> None:
        """Replay the saved epochs through EarlyStopping and give it back its best weights."""
        early = self.early
        for record in self.history:
            early.on_epoch_end(int(record["epoch"]) - 1, dict(record))
        if early.restore_best_weights and early.best_weights is not None:
            path = self._best_path(early.best_epoch + 1)
            if not path.exists():
                raise NnopsError(f"{path}: missing; delete {self.backup_dir} to start over")
            with np.load(path, allow_pickle=False) as npz:
                early.best_weights = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        self.model.stop_training = False

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        record = {"epoch": epoch + 1, **_record(logs or {}, self.model.optimizer)}
        self.history = [*self.history[:epoch], record]
        write_json(self.history_path, self.history)
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
    """Hand each finished epoch's record to ``sink(epoch, record)`` (e.g. an MLflow logger).

    Args:
        sink: called with the 1-based epoch number and its metrics.
    """

    def __init__(self, sink: Callable[[int, dict[str, float]], None]):
        super().__init__()
        self.sink = sink

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.sink(epoch + 1, _record(logs or {}, self.model.optimizer))


def effective_steps_per_execution(params: TrainParams, runtime: Runtime, steps: int) -> int:
    """Return how many batches run per call into TensorFlow, logging when it differs from params.

    ``model.fit`` takes ``train.steps_per_execution`` (it fails with more than one replica, which
    is why the distributed modes use the custom loop). The custom loop runs a whole epoch per call.

    Args:
        params: the ``train`` params section.
        runtime: the strategy in use.
        steps: optimizer steps per epoch.
    """
    if runtime.kind == "none":
        return params.steps_per_execution
    log.info(
        "train.distribute=%s: the custom training loop runs all %d steps of an epoch in one call "
        "(train.steps_per_execution=%d applies to model.fit only)",
        runtime.kind,
        steps,
        params.steps_per_execution,
    )
    return steps


def best_epoch(history: Sequence[Mapping[str, float]], monitor: str) -> int | None:
    """Return the 1-based epoch with the best ``monitor`` value (lowest loss, highest accuracy).

    Args:
        history: per-epoch records with an ``epoch`` key.
        monitor: the metric to rank by.
    """
    sign = 1.0 if "loss" in monitor else -1.0
    ranked = [(sign * r[monitor], r["epoch"]) for r in history if monitor in r]
    return int(min(ranked)[1]) if ranked else None  # ties: the earliest epoch


def fit(
    data: TrainData,
    params: TrainParams,
    runtime: Runtime,
    backup_dir: str | Path | None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    jit_compile: bool | str = "auto",
) -> tuple[keras.Model, TrainResult]:
    """Build, compile and train the model; resume from ``backup_dir`` when it holds a backup.

    Args:
        data: raw training and validation arrays with the preprocessing description.
        params: the ``train`` params section.
        runtime: devices and strategy from ``nnops.distribute.configure_runtime``.
        backup_dir: where to back up each epoch (``None``: no backup, no resume).
        callbacks: extra callbacks, called after the built-in ones each epoch.
        jit_compile: XLA compilation for ``Model.fit`` (single-device only).
    """
    n_features = int(data.x_train.shape[1])
    steps = steps_per_epoch(len(data.x_train), params.batch_size)
    spe = effective_steps_per_execution(params, runtime, steps)
    with runtime.strategy.scope():
        model = build_model(
            params, n_features, data.n_classes, data.preprocessing, params.mixed_precision
        )
        compile_model(
            model,
            params,
            steps,
            steps_per_execution=spe if runtime.kind == "none" else 1,
            jit_compile=jit_compile if runtime.kind == "none" else False,
            mixed_precision=params.mixed_precision,
        )
        # Optimizer slots created inside a replicated loop break it: create them up front.
        model.optimizer.build(model.trainable_variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    own: list[keras.callbacks.Callback] = [EpochOrder(epoch, steps)]
    early = None
    es = params.early_stopping
    # Without validation data, early stopping and the best epoch follow the training metric.
    monitor = es.monitor if data.x_val is not None else es.monitor.removeprefix("val_")
    if es.enabled:
        early = keras.callbacks.EarlyStopping(
            monitor=monitor,
            patience=es.patience,
            min_delta=es.min_delta,
            restore_best_weights=es.restore_best_weights,
            mode="min" if "loss" in monitor else "max",
        )
        own.append(early)
    backup = Backup(backup_dir, steps, early) if backup_dir is not None else None
    if backup is not None:
        own.append(backup)
    all_callbacks = [*own, *callbacks]
    if runtime.kind == "none" and params.input_pipeline == "in_graph":
        history = _fit_in_graph(model, data, params, spe, all_callbacks)
    elif runtime.kind == "none":
        history = _fit_keras(model, data, params, epoch, all_callbacks)
    else:
        history = _fit_custom(model, data, params, runtime, steps, epoch, all_callbacks)
    first = history[0]["epoch"] - 1 if history else 0
    if backup is not None:
        first, history = backup.first_epoch, backup.history
    result = TrainResult(
        history=history,
        start_epoch=first,
        stopped_early=bool(early is not None and early.stopped_epoch > 0),
        steps_per_execution=spe,
        best_epoch=best_epoch(history, monitor),
    )
    return model, result


def _history_from_logs(records: list[tuple[int, Mapping[str, Any]]]) -> list[dict[str, float]]:
    return [{"epoch": e + 1, **{k: float(v) for k, v in logs.items()}} for e, logs in records]


class _Collect(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, Mapping[str, Any]]] = []

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.records.append((epoch, _record(logs or {}, self.model.optimizer)))


def _fit_keras(
    model: keras.Model,
    data: TrainData,
    params: TrainParams,
    epoch: tf.Variable,
    callbacks: list[keras.callbacks.Callback],
) -> list[dict[str, float]]:
    val = None
    if data.x_val is not None:
        val_batch = max(params.batch_size, 1024)
        val = tf.data.Dataset.from_tensor_slices((data.x_val, data.y_val)).batch(val_batch).cache()
    if params.input_pipeline == "tf_data":
        x: Any = epoch_batches(data.x_train, data.y_train, params.batch_size, params.seed, epoch)
        kwargs: dict[str, Any] = {"shuffle": False}
        y = None
    else:
        x, y = data.x_train, data.y_train
        kwargs = {"batch_size": params.batch_size, "shuffle": True}
    collect = _Collect()
    model.fit(
        x,
        y,
        epochs=params.epochs,
        validation_data=val,
        callbacks=[*callbacks, collect],
        verbose=0,
        **kwargs,
    )
    return _history_from_logs(collect.records)


def _step(
    model: keras.Model, x: tf.Tensor, y: tf.Tensor, size: tf.Tensor, training: bool, replicas: int
) -> tf.Tensor:
    """One step on one replica; returns (summed loss incl. penalty, hits, examples).

    The loss is the mean over the global batch of ``size`` examples (the optimizer sums the
    replicas' gradients) plus the weight penalty once, as ``model.fit`` computes it.
    """
    optimizer = model.optimizer
    with tf.GradientTape() as tape:
        probs = tf.cast(model(x, training=training), tf.float32)
        per_example = keras.losses.sparse_categorical_crossentropy(y, probs)
        reg = tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) if model.losses else 0.0
        loss = tf.reduce_sum(per_example) / size + reg / replicas
        scaled = optimizer.scale_loss(loss) if training else loss
    if training:
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    count = tf.cast(tf.shape(y)[0], tf.float32)
    hits = tf.reduce_sum(
        tf.cast(tf.equal(tf.argmax(probs, axis=-1), tf.cast(y, tf.int64)), tf.float32)
    )
    return tf.stack([tf.reduce_sum(per_example) + reg * count, hits, count])


def _logs(train: np.ndarray, val: np.ndarray | None) -> dict[str, float]:
    logs = {"loss": train[0] / train[2], "accuracy": train[1] / train[2]}
    if val is not None:
        logs.update(val_loss=val[0] / val[2], val_accuracy=val[1] / val[2])
    return {k: float(v) for k, v in logs.items()}


def _drive(
    model: keras.Model,
    callbacks: list[keras.callbacks.Callback],
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
) -> list[dict[str, float]]:
    """The epoch loop of the custom loops: Keras callbacks around ``run_epoch(epoch) -> logs``."""
    cb = keras.callbacks.CallbackList(callbacks, model=model)
    model.stop_training = False
    cb.on_train_begin()
    first = next((c.first_epoch for c in callbacks if isinstance(c, Backup)), 0)
    records: list[tuple[int, Mapping[str, Any]]] = []
    for epoch in range(first, epochs):
        cb.on_epoch_begin(epoch)
        logs = run_epoch(epoch)
        cb.on_epoch_end(epoch, logs)
        records.append((epoch, _record(logs, model.optimizer)))
        if model.stop_training:
            break
    cb.on_train_end()
    return _history_from_logs(records)


def _fit_in_graph(
    model: keras.Model,
    data: TrainData,
    params: TrainParams,
    spe: int,
    callbacks: list[keras.callbacks.Callback],
) -> list[dict[str, float]]:
    """Single-device loop with no input pipeline: batches are sliced inside the compiled loop.

    The data stays in tensors; each call runs ``spe`` steps, taking batch indices from the
    epoch's seeded permutation (the same order ``epoch_batches`` gives), so there is no per-batch
    Python or tf.data work at all.
    """
    n, bs = len(data.x_train), params.batch_size
    full, tail = divmod(n, bs)
    xs, ys = tf.constant(data.x_train), tf.constant(data.y_train)

    @tf.function
    def train_steps(perm: tf.Tensor, first: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        totals = tf.zeros([3])
        for i in tf.range(first, first + count):
            idx = tf.slice(perm, [i * bs], [bs])
            size = tf.constant(bs, tf.float32)
            totals += _step(model, tf.gather(xs, idx), tf.gather(ys, idx), size, True, 1)
        return totals

    @tf.function
    def train_batch(idx: tf.Tensor) -> tf.Tensor:
        size = tf.cast(tf.size(idx), tf.float32)
        return _step(model, tf.gather(xs, idx), tf.gather(ys, idx), size, True, 1)

    @tf.function
    def evaluate(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return _step(model, x, y, tf.cast(tf.shape(y)[0], tf.float32), False, 1)

    def run_epoch(epoch: int) -> dict[str, float]:
        key = tf.constant([params.seed, epoch], tf.int64)
        perm = tf.argsort(tf.random.stateless_uniform([n], seed=key))
        totals = np.zeros(3)
        for first in range(0, full, spe):
            count = min(spe, full - first)
            totals += train_steps(perm, tf.constant(first), tf.constant(count)).numpy()
        if tail:
            totals += train_batch(perm[full * bs :]).numpy()
        val = None
        if data.x_val is not None:
            val = np.zeros(3)
            for i in range(0, len(data.x_val), 4096):
                val += evaluate(data.x_val[i : i + 4096], data.y_val[i : i + 4096]).numpy()
        return _logs(totals, val)

    return _drive(model, callbacks, params.epochs, run_epoch)


def _fit_custom(
    model: keras.Model,
    data: TrainData,
    params: TrainParams,
    runtime: Runtime,
    steps: int,
    epoch_var: tf.Variable,
    callbacks: list[keras.callbacks.Callback],
) -> list[dict[str, float]]:
    """TensorFlow's documented custom loop: ``strategy.run`` per step, Keras callbacks per epoch."""
    strategy = runtime.strategy
    total = int(strategy.num_replicas_in_sync)

    def pipeline(x: np.ndarray, y: np.ndarray, epoch: Any, shuffle: bool) -> Any:
        def make(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            local = total // ctx.num_input_pipelines
            shard = (ctx.input_pipeline_id * local, local, total)
            return epoch_batches(x, y, params.batch_size, params.seed, epoch, shuffle, shard)

        return strategy.distribute_datasets_from_function(make)

    def steps_fn(training: bool) -> Callable[..., tf.Tensor]:
        @tf.function
        def run(iterator: Any, n_steps: tf.Tensor) -> tf.Tensor:
            totals = tf.zeros([3])
            for _ in tf.range(n_steps):
                x, y, size = next(iterator)
                out = strategy.run(_step, args=(model, x, y, size, training, total))
                totals += strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)
            return totals

        return run

    train_steps, eval_steps = steps_fn(True), steps_fn(False)
    train_ds = pipeline(data.x_train, data.y_train, epoch_var, True)
    has_val = data.x_val is not None
    val_ds = pipeline(data.x_val, data.y_val, 0, False) if has_val else None
    val_steps = math.ceil(len(data.x_val) / params.batch_size) if has_val else 0

    def run_epoch(epoch: int) -> dict[str, float]:
        totals = train_steps(iter(train_ds), tf.constant(steps)).numpy()
        val = eval_steps(iter(val_ds), tf.constant(val_steps)).numpy() if has_val else None
        return _logs(totals, val)

    return _drive(model, callbacks, params.epochs, run_epoch)


def load_processed(folder: str | Path) -> tuple[TrainData, dict[str, Any], np.ndarray]:
    """Read ``data/processed``: raw train/val arrays, the preprocessing spec and the meta.

    Returns the training data, ``meta.json`` and the preprocessed training features (to check
    that the model's preprocessing layer reproduces them).

    Args:
        folder: the preprocess stage's output folder.
    """
    folder = Path(folder)
    arrays = {}
    for split in ("train", "val"):
        path = folder / f"{split}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays[split] = {k: npz[k] for k in ("x_raw", "x", "y")}
        except FileNotFoundError:
            raise NnopsError(f"{path}: file not found (did the preprocess stage run?)") from None
        except KeyError as exc:
            raise NnopsError(f"{path}: missing array {exc} (expected x_raw, x, y)") from None
        x, y = arrays[split]["x_raw"], arrays[split]["y"]
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
            raise NnopsError(f"{path}: x_raw {x.shape} and y {y.shape}; expected (n, d) and (n,)")
    meta = read_json(folder / "meta.json")
    spec = read_json(folder / "preprocessing.json")
    n_classes = len(meta.get("class_names") or [])
    labels = np.concatenate([arrays["train"]["y"], arrays["val"]["y"]])
    if n_classes < 2 or labels.min() < 0 or labels.max() >= n_classes:
        raise NnopsError(
            f"{folder / 'meta.json'}: class_names lists {n_classes} classes but labels range "
            f"{labels.min()}..{labels.max()}"
        )
    if arrays["train"]["x_raw"].shape[1] != arrays["val"]["x_raw"].shape[1]:
        raise NnopsError(f"{folder}: train and val have different feature counts")
    has_val = len(arrays["val"]["y"]) > 0
    data = TrainData(
        x_train=arrays["train"]["x_raw"].astype("float32"),
        y_train=arrays["train"]["y"].astype("int64"),
        x_val=arrays["val"]["x_raw"].astype("float32") if has_val else None,
        y_val=arrays["val"]["y"].astype("int64") if has_val else None,
        n_classes=n_classes,
        preprocessing=spec,
    )
    return data, meta, arrays["train"]["x"]


def check_preprocessing(
    spec: Mapping[str, Any], x_raw: np.ndarray, x: np.ndarray, source: str | Path
) -> None:
    """Fail unless the model's preprocessing layer maps raw rows to the preprocessed rows.

    Args:
        spec: the preprocess stage's description of its scaling.
        x_raw: raw training rows.
        x: the same rows as the preprocess stage scaled them.
        source: where the spec came from, for the message.
    """
    rows = slice(0, min(len(x_raw), 512))
    layer = preprocessing_layer(spec, int(x_raw.shape[1]))
    mapped = x_raw[rows] if layer is None else keras.ops.convert_to_numpy(layer(x_raw[rows]))
    if mapped.shape != x[rows].shape or not np.allclose(mapped, x[rows], rtol=1e-4, atol=1e-4):
        worst = float(np.max(np.abs(mapped - x[rows]))) if mapped.shape == x[rows].shape else None
        raise NnopsError(
            f"{source}: the preprocessing it describes does not reproduce x from x_raw "
            f"(largest difference {worst:.3g}); the saved model would not take raw input"
            if worst is not None
            else f"{source}: x_raw and x differ in shape ({mapped.shape} vs {x[rows].shape})"
        )


def saved_metrics(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Return loss (with any weight penalty, as Keras reports it) and accuracy of ``model`` now.

    Args:
        model: the trained model, with the weights it will be saved with.
        x: raw features.
        y: class indices.
    """
    probs = np.concatenate(
        [
            keras.ops.convert_to_numpy(model(x[i : i + 4096], training=False))
            for i in range(0, len(x), 4096)
        ]
    ).astype("float64")
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))
    penalty = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)
    return {"loss": float(nll.mean()) + penalty, "accuracy": float((probs.argmax(1) == y).mean())}


def fingerprint(params: TrainParams, data_hash: str, n_features: int) -> str:
    """Identify what a backup belongs to: the train params and the data.

    Args:
        params: the ``train`` params section.
        data_hash: ``data_hash`` of the processed data.
        n_features: width of the input.
    """
    import hashlib
    import json

    blob = json.dumps([params.model_dump(mode="json"), data_hash, n_features], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare_backup(
    folder: str | Path, params: TrainParams, meta: Mapping[str, Any], data: TrainData
) -> tuple[Path, dict[str, Any]]:
    """Keep a backup made with these params and data, clear any other; return it and its state.

    The state (``state.json``) holds the fingerprint and the MLflow run the backup belongs to.

    Args:
        folder: the backup folder (``models/backup``).
        params: the ``train`` params section.
        meta: ``data/processed/meta.json``.
        data: the training data.
    """
    import shutil

    folder = Path(folder)
    print_ = fingerprint(params, str(meta.get("data_hash", "")), int(data.x_train.shape[1]))
    state_path = folder / "state.json"
    state = read_json(state_path) if state_path.exists() else {}
    if state.get("fingerprint") == print_ and (folder / "latest.weights.h5").exists():
        return folder, state
    if folder.exists() and any(p.name != EMPTY_MARK for p in folder.iterdir()):
        log.info("discarding %s: it belongs to other params or data", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": print_, "run_id": None}
    write_json(state_path, state)
    return folder, state


@dataclass
class TrackedRun:
    """The MLflow run of one pipeline execution, as the train stage drives it."""

    info: Any
    logger: Any
    backup: Path

    @classmethod
    def start(
        cls,
        uri: str,
        params: Any,
        meta: Mapping[str, Any],
        runtime: Runtime,
        backup: Path,
        state: Mapping[str, Any],
    ) -> TrackedRun:
        """Continue the run of an interrupted execution (from the backup) or start one.

        Args:
            uri: the tracking URI.
            params: all params (logged under their dotted names).
            meta: ``data/processed/meta.json``.
            runtime: the strategy and devices.
            backup: the backup folder, which remembers the run id.
            state: the backup's state.
        """
        from nnops import tracking

        tags = run_tags(tracking.git_state(Path.cwd()), meta, runtime)
        flat = params.flat()
        info = tracking.start_training_run(
            uri, params.mlflow.experiment, flat, tags, state.get("run_id")
        )
        write_json(backup / "state.json", {**state, "run_id": info.run_id})
        return cls(info, tracking.EpochLogger(info), backup)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """The Keras callback that logs each epoch into the run."""
        return [EpochSink(self.logger)]

    def finish(
        self,
        model: keras.Model,
        data: TrainData,
        result: TrainResult,
        summary: Mapping[str, Any],
        files: dict[str, list[Path]],
        data_dir: str | Path,
        meta: Mapping[str, Any],
        run_json: Path,
    ) -> None:
        """Log what the epochs did not (model, lineage, files, final metrics); write run.json.

        Args:
            model: the trained model.
            data: the training data.
            result: what ``fit`` returned.
            summary: the stage summary.
            files: artifact folder to files.
            data_dir: ``data/processed``.
            meta: ``data/processed/meta.json``.
            run_json: where to write the run's identifiers (``models/run.json``).
        """
        from nnops import tracking

        self.logger.catch_up(result.history)
        info = tracking.finish_training_run(
            self.info,
            model,
            data.x_train[:5],
            run_metrics(summary),
            files,
            lineage(data_dir, data, meta),
            pip_requirements(),
        )
        tracking.write_run_info(run_json, info)

    def fail(self) -> None:
        """Mark the run failed; rerunning the stage continues it from the backup."""
        from nnops import tracking

        tracking.fail_run(self.info)


def describe(result: TrainResult, summary: Mapping[str, Any]) -> str:
    """One line about what this execution trained.

    Args:
        result: what ``fit`` returned.
        summary: the stage summary.
    """
    done = len(result.history)
    ran = f"epochs {result.start_epoch + 1}-{done}" if done > result.start_epoch else "no epochs"
    resumed = f" (resumed after epoch {result.start_epoch})" if result.start_epoch else ""
    val = summary["restored"].get("val_accuracy")
    return f"{ran}{resumed}, {done} in all" + (
        f", val accuracy {val:.4f}" if val is not None else ""
    )


def clear_backup(folder: str | Path) -> None:
    """Empty the backup folder after a successful run (the empty folder stays: a DVC output).

    Args:
        folder: the backup folder.
    """
    import shutil

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EMPTY_MARK).write_text("No interrupted training to resume.\n", encoding="utf-8")


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save in Keras format atomically: a failure keeps any earlier model file.

    Args:
        model: the model.
        path: the ``.keras`` destination.
    """
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_history_csv(path: str | Path, history: Sequence[Mapping[str, float]]) -> None:
    """Write the per-epoch history as the DVC plots file.

    Args:
        path: ``reports/train/history.csv``.
        history: per-epoch records.
    """
    import csv

    from nnops.io import atomic_path

    fields = ["epoch", *[k for k in HISTORY_KEYS if any(k in r for r in history)]]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for record in history:
            writer.writerow({k: record.get(k, "") for k in fields})


def run_tags(git: Mapping[str, str], meta: Mapping[str, Any], runtime: Runtime) -> dict[str, str]:
    """Tags that tie an MLflow run to its code, data, DVC experiment and hardware.

    Args:
        git: ``commit`` and ``dirty`` from ``nnops.tracking.git_state``.
        meta: ``data/processed/meta.json``.
        runtime: the strategy and devices used.
    """
    import os

    tags = {
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "mlflow.source.git.commit": git["commit"],
        "data.hash": str(meta.get("data_hash", "unknown")),
        "data.source": str(meta.get("source", "unknown")),
        "data.raw_hash": str(meta.get("content_hash", "unknown")),
        "strategy": runtime.kind,
        "replicas": str(runtime.replicas),
        "device": ", ".join(runtime.devices),
        **{f"version.{k}": v for k, v in runtime.versions.items()},
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def summary(
    result: TrainResult, runtime: Runtime, params: TrainParams, model: keras.Model, data: TrainData
) -> dict[str, Any]:
    """The train stage's ``reports/train/summary.json``; epochs are counted from 1.

    Args:
        result: what ``fit`` returned.
        runtime: the strategy and devices used.
        params: the ``train`` params section.
        model: the trained model, with the weights it is saved with.
        data: the training data.
    """
    es = params.early_stopping
    restored = saved_metrics(model, data.x_train, data.y_train)
    if data.x_val is not None:
        restored.update(
            {f"val_{k}": v for k, v in saved_metrics(model, data.x_val, data.y_val).items()}
        )
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "epochs_planned": params.epochs,
        "resumed_from_epoch": result.start_epoch or None,
        "early_stopped": result.stopped_early,
        "restored_best_weights": bool(es.enabled and es.restore_best_weights),
        "restored": restored,
        "seed": params.seed,
        "deterministic": params.deterministic,
        "steps_per_execution": result.steps_per_execution,
        "input_pipeline": params.input_pipeline,
        "mixed_precision": params.mixed_precision,
        "parameters": int(model.count_params()),
        **runtime.describe(),
    }


def run_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Single-valued metrics for MLflow: best epoch and the saved weights' metrics.

    Args:
        summary: the stage summary from ``summary``.
    """
    out = {
        "best_epoch": float(summary["best_epoch"] or 0),
        "epochs_run": float(summary["epochs_run"]),
    }
    out.update({f"restored_{k}": float(v) for k, v in summary["restored"].items()})
    return out


def lineage(folder: str | Path, data: TrainData, meta: Mapping[str, Any]) -> list[tuple]:
    """``(context, features, targets, source, digest)`` of the arrays the model learned from.

    Args:
        folder: ``data/processed``.
        data: the training data.
        meta: ``data/processed/meta.json``.
    """
    digest = str(meta.get("data_hash", ""))[:16] or None
    rows = [("training", data.x_train, data.y_train, str(Path(folder) / "train.npz"), digest)]
    if data.x_val is not None:
        rows.append(("validation", data.x_val, data.y_val, str(Path(folder) / "val.npz"), digest))
    return rows


def pip_requirements() -> list[str]:
    """What the logged model needs to load (pinned to the training versions)."""
    return [
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"numpy=={np.__version__}",
    ]
