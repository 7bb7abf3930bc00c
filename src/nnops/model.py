"""The network: the textbook Keras MLP, built from ``params.train``, with preprocessing inside.

``build_model`` with the default params gives exactly the textbook model (Dense 64 relu,
Dense 64 relu, Dense softmax; adam; sparse categorical cross-entropy; accuracy), preceded by the
preprocessing layer fitted by the preprocess stage, so the saved model takes raw features.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nnops.config import TrainParams
from nnops.errors import NnopsError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

LOSS = "sparse_categorical_crossentropy"
METRICS = ("accuracy",)


def preprocessing_layer(spec: Mapping[str, Any], n_features: int) -> keras.layers.Layer | None:
    """Turn ``data/processed/preprocessing.json`` into the Keras layer that applies it.

    Args:
        spec: the parsed preprocessing description (``method`` plus its numbers).
        n_features: the width of the raw input, to check per-feature statistics against.
    """
    import keras

    method = spec.get("method")
    if method == "none":
        return None
    if "mean" in spec or "variance" in spec:
        mean, variance = spec.get("mean"), spec.get("variance")
        for key, value in (("mean", mean), ("variance", variance)):
            if not isinstance(value, list) or len(value) not in (1, n_features):
                raise NnopsError(
                    f"preprocessing.json: {key} must be a list of 1 or {n_features} numbers; "
                    f"received {type(value).__name__} of length "
                    f"{len(value) if isinstance(value, list) else 'n/a'}"
                )
        return keras.layers.Normalization(mean=mean, variance=variance, name="preprocess")
    if method in ("rescale", "standardize"):
        if "scale" not in spec:
            raise NnopsError(f"preprocessing.json: method {method!r} needs 'scale' (and 'offset')")
        scale, offset = spec["scale"], spec.get("offset", 0.0)
        for key, value in (("scale", scale), ("offset", offset)):
            if isinstance(value, list) and len(value) != n_features:
                raise NnopsError(
                    f"preprocessing.json: {key} has {len(value)} values, expected {n_features}"
                )
        return keras.layers.Rescaling(scale=scale, offset=offset, name="preprocess")
    raise NnopsError(
        f"preprocessing.json: method={method!r} is not one of 'rescale', 'standardize', 'none'"
    )


def build_model(
    params: TrainParams,
    n_features: int,
    n_classes: int,
    preprocessing: Mapping[str, Any],
    mixed_precision: bool = False,
) -> keras.Model:
    """Build the (uncompiled) MLP that maps raw features to class probabilities.

    Args:
        params: the ``train`` params section.
        n_features: width of the raw input.
        n_classes: number of classes (units of the softmax layer).
        preprocessing: the preprocess stage's description of its scaling.
        mixed_precision: compute hidden layers in float16 (the output stays float32).
    """
    import keras

    if n_features < 1 or n_classes < 2:
        raise NnopsError(
            f"the model needs at least 1 feature and 2 classes; received "
            f"n_features={n_features}, n_classes={n_classes}"
        )
    hidden_dtype = "mixed_float16" if mixed_precision else None
    # AdamW applies train.l2 as decoupled weight decay; the other optimizers as an L2 penalty.
    l2 = params.l2 if params.l2 > 0 and params.optimizer != "adamw" else None
    regularizer = keras.regularizers.L2(l2) if l2 else None

    layers: list[Any] = [keras.Input(shape=(n_features,), name="features")]
    pre = preprocessing_layer(preprocessing, n_features)
    if pre is not None:
        layers.append(pre)
    for i, spec in enumerate(params.hidden_layers, start=1):
        layers.append(
            keras.layers.Dense(
                spec.units,
                activation=spec.activation,
                kernel_regularizer=regularizer,
                dtype=hidden_dtype,
                name=f"hidden_{i}",
            )
        )
        if spec.dropout > 0:
            layers.append(
                keras.layers.Dropout(spec.dropout, seed=params.seed + i, name=f"dropout_{i}")
            )
    layers.append(
        keras.layers.Dense(
            n_classes,
            activation="softmax",
            kernel_regularizer=regularizer,
            dtype="float32",
            name="probabilities",
        )
    )
    return keras.Sequential(layers, name="nnops_mlp")


def make_optimizer(
    params: TrainParams, steps_per_epoch: int, mixed_precision: bool = False
) -> keras.optimizers.Optimizer:
    """Create the optimizer named by ``train.optimizer`` with its learning-rate schedule.

    Args:
        params: the ``train`` params section.
        steps_per_epoch: optimizer steps in one epoch (sets the schedules' time scale).
        mixed_precision: wrap in a loss-scale optimizer for float16 training.
    """
    import keras

    if steps_per_epoch < 1:
        raise NnopsError(f"steps_per_epoch must be positive; received {steps_per_epoch}")
    lr: Any = params.learning_rate
    if params.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=params.epochs * steps_per_epoch)
    elif params.lr_schedule == "exponential":
        lr = keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=steps_per_epoch, decay_rate=params.lr_decay_rate
        )
    optimizer: keras.optimizers.Optimizer
    if params.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=lr)
    elif params.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=lr)
    elif params.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate=lr)
    else:
        optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=params.l2)
    if mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def compile_model(
    model: keras.Model,
    params: TrainParams,
    steps_per_epoch: int,
    steps_per_execution: int = 1,
    jit_compile: bool | str = "auto",
    mixed_precision: bool = False,
) -> keras.Model:
    """Compile ``model`` with the textbook loss and metric and the configured optimizer.

    Args:
        model: the model from ``build_model``.
        params: the ``train`` params section.
        steps_per_epoch: optimizer steps in one epoch.
        steps_per_execution: batches run per call into TensorFlow.
        jit_compile: XLA compilation, passed to ``Model.compile``.
        mixed_precision: whether the model computes in float16.
    """
    model.compile(
        optimizer=make_optimizer(params, steps_per_epoch, mixed_precision),
        loss=LOSS,
        metrics=list(METRICS),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    return model


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """Return the number of batches in one pass over ``n_samples`` (the last one may be short).

    Args:
        n_samples: training examples.
        batch_size: examples per batch.
    """
    if n_samples < 1:
        raise NnopsError(f"no training examples (n_samples={n_samples})")
    return math.ceil(n_samples / batch_size)
