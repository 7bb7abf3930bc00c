"""The tuning search space: which ``train.*`` key each dimension sets, and how values apply.

A dimension names a ``train`` param by its dotted ``params.yaml`` name. Three shapes reach into
the list of hidden layers: ``train.hidden_layers`` (an int: how many layers; added layers copy the
last one), ``train.hidden_layers.*.units`` (every layer) and ``train.hidden_layers.1.dropout``
(one layer). Applying values goes through ``TrainParams.model_validate``, so a sampled point is
checked exactly like ``params.yaml`` is. Pure and light: no Optuna, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from nnops.config import CategoricalDim, Dimension, EarlyStoppingParams, HiddenLayer, TrainParams

# Set once per process (devices, strategy), so a trial cannot vary them.
PROCESS_KEYS = ("device", "distribute")
LAYERS = "hidden_layers"


def _parts(key: str) -> list[str]:
    parts = key.split(".")
    if len(parts) < 2 or parts[0] != "train":
        raise ValueError(f"must name a train param (train.<name>); received {key!r}")
    return parts[1:]


def check_key(key: str, train: TrainParams) -> None:
    """Fail unless ``key`` names a ``train`` param a trial may set.

    Args:
        key: the dotted key, e.g. ``train.learning_rate``.
        train: the ``train`` section the trials start from.
    """
    parts = _parts(key)
    head, rest = parts[0], parts[1:]
    if head not in TrainParams.model_fields:
        import difflib

        names = sorted(TrainParams.model_fields)
        close = difflib.get_close_matches(head, names, n=1)
        hint = f"; did you mean 'train.{close[0]}'?" if close else ""
        raise ValueError(f"{key!r} is not a train param{hint} (allowed: {', '.join(names)})")
    if head in PROCESS_KEYS:
        raise ValueError(f"{key!r} is set once per process and cannot vary between trials")
    if head == "early_stopping":
        if len(rest) != 1 or rest[0] not in EarlyStoppingParams.model_fields:
            names = ", ".join(EarlyStoppingParams.model_fields)
            raise ValueError(f"{key!r}: use train.early_stopping.<name>, name one of {names}")
    elif head == LAYERS:
        if rest and (len(rest) != 2 or rest[1] not in HiddenLayer.model_fields):
            raise ValueError(
                f"{key!r}: use train.hidden_layers (the count), train.hidden_layers.*.<field> or "
                f"train.hidden_layers.<index>.<field> with field one of units, activation, dropout"
            )
        if rest and rest[0] != "*" and not rest[0].isdigit():
            raise ValueError(f"{key!r}: the layer must be * or an index; received {rest[0]!r}")
    elif rest:
        raise ValueError(f"{key!r}: train.{head} has no sub-keys")


def apply(train: TrainParams, values: Mapping[str, Any]) -> TrainParams:
    """Return ``train`` with ``values`` (dotted key -> value) set, validated like params.yaml.

    The layer count applies first, then ``*`` layer fields, then single-layer fields.

    Args:
        train: the ``train`` section the trial starts from.
        values: the sampled value of each dimension.
    """
    raw = train.model_dump(mode="json")
    layers = raw[LAYERS]
    order = sorted(values, key=lambda k: (k.count("."), ".*." not in k))
    for key in order:
        value, parts = values[key], _parts(key)
        if parts == [LAYERS]:
            count = int(value)
            if count < 1:
                raise ValueError(f"{key}: needs at least 1 hidden layer; received {value!r}")
            if not layers:
                raise ValueError(
                    f"{key}: train.hidden_layers is empty (a linear model), so a trial has no "
                    "layer to copy; give train.hidden_layers one layer for trials to start from, "
                    "or drop the train.hidden_layers entries from tune.space"
                )
            layers = [dict(layers[min(i, len(layers) - 1)]) for i in range(count)]
        elif parts[0] == LAYERS:
            index, field = parts[1], parts[2]
            targets = range(len(layers)) if index == "*" else [int(index)]
            for i in targets:
                if i >= len(layers):
                    raise ValueError(f"{key}: layer {i} does not exist ({len(layers)} layers)")
                layers[i][field] = value
        elif parts[0] == "early_stopping":
            raw["early_stopping"][parts[1]] = value
        else:
            raw[parts[0]] = value
    raw[LAYERS] = layers
    return TrainParams.model_validate(raw)


def candidates(dim: Dimension) -> list[Any]:
    """The values a dimension can take at its edges (bounds, or every choice).

    Args:
        dim: one entry of ``tune.space``.
    """
    return list(dim.choices) if isinstance(dim, CategoricalDim) else [dim.low, dim.high]


def check_space(space: Sequence[Dimension], train: TrainParams, tuning: bool = False) -> None:
    """Fail (ValueError naming ``tune.space.<i>``) unless every key and edge value is valid.

    A linear model (``train.hidden_layers: []``) has no layer for the layer dimensions to copy;
    that is refused only when tuning, so the documented linear model trains with the default
    ``tune`` section in place.

    Args:
        space: ``tune.space``.
        train: the ``train`` section the trials start from.
        tuning: whether ``nnops tune`` is about to use the space.
    """
    for i, dim in enumerate(space):
        if not tuning and not train.hidden_layers and dim.key.startswith(f"train.{LAYERS}"):
            continue
        where = f"tune.space.{i}.key"
        try:
            check_key(dim.key, train)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        for value in candidates(dim):
            try:
                apply(train, {dim.key: value})
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ValueError(
                    f"tune.space.{i} ({dim.key}): value {value!r} is not accepted "
                    f"(train.{loc}: {first['msg']})"
                ) from None
            except ValueError as exc:
                raise ValueError(f"tune.space.{i} ({dim.key}): {exc}") from None


def _hydra(value: Any) -> str:
    """Write a value in the override syntax ``dvc exp run -S`` reads (Hydra's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra(v)}" for k, v in value.items()) + "}"
    return str(value)


def overrides(base: TrainParams, tuned: TrainParams) -> list[str]:
    """The ``key=value`` overrides that turn ``base`` into ``tuned`` (for ``dvc exp run -S``).

    Args:
        base: the ``train`` section in params.yaml.
        tuned: the winning trial's ``train`` section.
    """
    old, new = base.model_dump(mode="json"), tuned.model_dump(mode="json")
    out = []
    for name, value in new.items():
        if value == old[name]:
            continue
        if isinstance(value, dict):
            out += [f"train.{name}.{k}={_hydra(v)}" for k, v in value.items() if v != old[name][k]]
        else:
            out.append(f"train.{name}={_hydra(value)}")
    return out
