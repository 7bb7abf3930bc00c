"""The training loops: Keras ``Model.fit``, the in-graph loop, and the distributed custom loop.

Each loop trains a compiled model for the epochs that are left and drives the same Keras
callbacks once per epoch; what an epoch did reaches the caller only through those callbacks
(``callbacks.EpochHistory`` keeps the record).

- ``keras_fit_loop``: ``Model.fit`` on a seeded tf.data pipeline (``tf_data``) or on NumPy arrays
  (``numpy``), ``steps_per_execution`` steps per call.
- ``in_graph_loop``: single device, no input pipeline: each call runs ``steps_per_execution``
  steps (a whole epoch by default) inside one compiled function that slices batches from
  tensors held in memory.
- ``distributed_loop``: TensorFlow's custom loop with ``strategy.run`` per step, because Keras 3's
  ``fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585) and with
  ``steps_per_execution > 1`` on more than one replica.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from nnops.callbacks import EpochHistory
from nnops.config import TrainParams
from nnops.distribute import Runtime

EVAL_ROWS = 4096  # validation rows per compiled call of the in-graph loop
# XLA compiles the in-graph training steps in about 2 s on a CPU and then runs each step in about
# half the time; below this many planned steps (epochs x steps per epoch) it does not pay.
XLA_MIN_STEPS = 4000


def use_xla(jit_compile: bool | str, planned_steps: int) -> bool:
    """Whether the in-graph loop compiles its steps with XLA.

    It depends on the planned run only (never on the epochs left), so a resumed run computes
    exactly as the uninterrupted one.

    Args:
        jit_compile: ``True``, ``False`` or ``"auto"`` (XLA from ``XLA_MIN_STEPS`` planned steps).
        planned_steps: ``train.epochs`` times the steps of one epoch.
    """
    if jit_compile == "auto":
        return planned_steps >= XLA_MIN_STEPS
    return bool(jit_compile)


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
        idx = epoch_permutation(n, seed, epoch) if shuffle else tf.range(n)
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


def epoch_permutation(n: int, seed: int, epoch: tf.Variable | int) -> tf.Tensor:
    """The order of the ``n`` training rows in epoch ``epoch``: a function of ``(seed, epoch)``.

    Args:
        n: rows.
        seed: the shuffle seed.
        epoch: the 0-based epoch.
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.argsort(tf.random.stateless_uniform([n], seed=key))


def keras_fit_loop(
    model: keras.Model,
    data: Any,
    params: TrainParams,
    epoch: tf.Variable,
    callbacks: list[keras.callbacks.Callback],
) -> None:
    """``Model.fit`` on the seeded tf.data pipeline (``tf_data``) or NumPy arrays (``numpy``).

    Args:
        model: the compiled model.
        data: ``TrainData``.
        params: the ``train`` params section.
        epoch: the variable the tf.data pipeline reads its epoch from.
        callbacks: the run's callbacks.
    """
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
    model.fit(
        x, y, epochs=params.epochs, validation_data=val, callbacks=callbacks, verbose=0, **kwargs
    )


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


def _epochs(
    model: keras.Model,
    callbacks: Sequence[keras.callbacks.Callback],
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
) -> None:
    """The epoch loop of the custom loops: Keras callbacks around ``run_epoch(epoch) -> logs``.

    It starts after the epochs a restored backup already did (``EpochHistory.first_epoch``).
    """
    cb = keras.callbacks.CallbackList(list(callbacks), model=model)
    model.stop_training = False
    cb.on_train_begin()
    history = next((c for c in callbacks if isinstance(c, EpochHistory)), None)
    for epoch in range(history.first_epoch if history else 0, epochs):
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, run_epoch(epoch))
        if model.stop_training:
            break
    cb.on_train_end()


def in_graph_loop(
    model: keras.Model,
    data: Any,
    params: TrainParams,
    spe: int,
    callbacks: list[keras.callbacks.Callback],
    jit_compile: bool = False,
) -> None:
    """Single-device loop with no input pipeline: batches are sliced inside the compiled loop.

    The data stays in tensors; each call runs ``spe`` steps, taking batch indices from the
    epoch's seeded permutation (the same order ``epoch_batches`` gives), so there is no per-batch
    Python or tf.data work at all.

    Args:
        model: the compiled model.
        data: ``TrainData``.
        params: the ``train`` params section.
        spe: steps per compiled call.
        callbacks: the run's callbacks.
        jit_compile: compile the training steps with XLA, which fuses each step's many small
            ops (the optimizer's above all) into a few kernels (see ``use_xla``).
    """
    n, bs = len(data.x_train), params.batch_size
    full, tail = divmod(n, bs)
    xs, ys = tf.constant(data.x_train), tf.constant(data.y_train)

    # No autograph: the loop is an explicit tf.while_loop, and converting costs about a second.
    @tf.function(jit_compile=jit_compile, autograph=False)
    def train_steps(perm: tf.Tensor, first: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        # An explicit while loop: XLA would take the bounds of a `for ... in tf.range` loop as
        # constants and compile once per distinct (first, count).
        def body(i: tf.Tensor, totals: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            idx = tf.slice(perm, [i * bs], [bs])
            size = tf.constant(bs, tf.float32)
            out = _step(model, tf.gather(xs, idx), tf.gather(ys, idx), size, True, 1)
            return i + 1, totals + out

        last = first + count
        _, totals = tf.while_loop(lambda i, _: i < last, body, (first, tf.zeros([3])))
        return totals

    @tf.function(autograph=False)
    def train_batch(idx: tf.Tensor) -> tf.Tensor:
        size = tf.cast(tf.size(idx), tf.float32)
        return _step(model, tf.gather(xs, idx), tf.gather(ys, idx), size, True, 1)

    @tf.function(autograph=False)
    def evaluate(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return _step(model, x, y, tf.cast(tf.shape(y)[0], tf.float32), False, 1)

    def run_epoch(epoch: int) -> dict[str, float]:
        perm = epoch_permutation(n, params.seed, epoch)
        totals = np.zeros(3)
        for first in range(0, full, spe):
            count = min(spe, full - first)
            totals += train_steps(perm, tf.constant(first), tf.constant(count)).numpy()
        if tail:
            totals += train_batch(perm[full * bs :]).numpy()
        val = None
        if data.x_val is not None:
            val = np.zeros(3)
            for i in range(0, len(data.x_val), EVAL_ROWS):
                rows = slice(i, i + EVAL_ROWS)
                val += evaluate(data.x_val[rows], data.y_val[rows]).numpy()
        return _logs(totals, val)

    _epochs(model, callbacks, params.epochs, run_epoch)


def distributed_loop(
    model: keras.Model,
    data: Any,
    params: TrainParams,
    runtime: Runtime,
    steps: int,
    epoch_var: tf.Variable,
    callbacks: list[keras.callbacks.Callback],
) -> None:
    """TensorFlow's documented custom loop: ``strategy.run`` per step, a whole epoch per call.

    Args:
        model: the compiled model, built in the strategy's scope.
        data: ``TrainData``.
        params: the ``train`` params section.
        runtime: the strategy and devices.
        steps: optimizer steps per epoch.
        epoch_var: the variable the input pipelines read their epoch from.
        callbacks: the run's callbacks.
    """
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

    _epochs(model, callbacks, params.epochs, run_epoch)
