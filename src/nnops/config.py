"""Typed, frozen view of ``params.yaml``.

This module imports only the standard library, pydantic and yaml so that a bad
value fails before any heavy import (TensorFlow, MLflow, Great Expectations).
Every error names the full dotted key, the value received and what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """Raised when ``params.yaml`` cannot be read or holds an invalid value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
UnitFraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]

Source = Literal["digits", "mnist", "fashion_mnist", "npz", "csv"]


class DataParams(_Section):
    source: Source = "digits"
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    label_column: str = "label"
    exclude_columns: tuple[str, ...] = ()
    cache_dir: str = "data/cache"

    @model_validator(mode="after")
    def _path_for_local_sources(self) -> DataParams:
        if self.source in ("npz", "csv") and not (self.path or self.url):
            raise ValueError(
                f"data.source={self.source!r} needs data.path (a local file) or data.url "
                "(a download source); received neither"
            )
        return self


class SplitParams(_Section):
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    seed: int = 42

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "split.val_fraction + split.test_fraction must be below 0.9 so that training "
                f"data remains; received {self.val_fraction} + {self.test_fraction}"
            )
        return self


class ValidateParams(_Section):
    min_rows: PositiveInt = 100
    value_min: float | None = None
    value_max: float | None = None
    min_class_fraction: UnitFraction = 0.02
    max_class_fraction: UnitFraction = 0.9
    max_duplicate_fraction: UnitFraction = 0.05
    # drift between the train and test partitions (and of new batches against the training profile)
    drift_alpha: Fraction
    drift_distance: Annotated[float, Field(gt=0.0)]
    drift_share: Annotated[float, Field(ge=0.0, lt=1.0)]
    drift_switch_rows: PositiveInt
    drift_refuse_predict: bool

    @model_validator(mode="after")
    def _ordered_bounds(self) -> ValidateParams:
        bounded = self.value_min is not None and self.value_max is not None
        if bounded and self.value_min >= self.value_max:
            raise ValueError(
                f"validate.value_min must be below validate.value_max; received "
                f"{self.value_min} >= {self.value_max}"
            )
        if self.min_class_fraction > self.max_class_fraction:
            raise ValueError(
                "validate.min_class_fraction must not exceed validate.max_class_fraction; "
                f"received {self.min_class_fraction} > {self.max_class_fraction}"
            )
        return self


class PreprocessParams(_Section):
    scaling: Literal["auto", "rescale", "standardize", "none"] = "auto"


class HiddenLayer(_Section):
    units: PositiveInt
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish", "linear"] = (
        "relu"
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class EarlyStoppingParams(_Section):
    enabled: bool = False
    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"] = "val_loss"
    patience: PositiveInt = 5
    min_delta: NonNegFloat = 0.0
    restore_best_weights: bool = True


class TrainParams(_Section):
    seed: int = 42
    deterministic: bool = True
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 32
    hidden_layers: tuple[HiddenLayer, ...] = (
        HiddenLayer(units=64, activation="relu"),
        HiddenLayer(units=64, activation="relu"),
    )
    l2: NonNegFloat = 0.0
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.001
    lr_schedule: Literal["none", "cosine", "exponential"] = "none"
    lr_decay_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    steps_per_execution: PositiveInt = 32
    input_pipeline: Literal["in_graph", "tf_data", "numpy"] = "in_graph"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    mixed_precision: bool = False
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"


class FitThresholds(_Section):
    min_train_accuracy: UnitFraction = 0.9
    max_accuracy_gap: UnitFraction = 0.05
    max_loss_gap: NonNegFloat = 0.15
    min_val_loss_rise: NonNegFloat = 0.1


class EvaluateParams(_Section):
    fit: FitThresholds = FitThresholds()
    learning_curve: tuple[Fraction | Literal[1.0], ...] | None = None
    slice_by: tuple[str, ...] = ()
    slice_max_gap: UnitFraction = 0.05
    explain: bool = True
    explain_samples: PositiveInt = 50
    explain_method: Literal["integrated_gradients", "gradient_x_input"] = "integrated_gradients"
    explain_steps: PositiveInt = 32
    explain_errors: PositiveInt = 16
    explain_repeats: PositiveInt = 5


class RegisterParams(_Section):
    model_name: str = Field("nnops-mlp", min_length=1)
    min_test_accuracy: UnitFraction = 0.9
    require_good_fit: bool = True
    compare_to_champion: bool = True
    max_regression: UnitFraction = 0.0
    challenger_alias: bool = True


class MlflowParams(_Section):
    tracking_uri: str | None = None
    experiment: str = Field("nnops", min_length=1)
    connect_timeout_s: Annotated[float, Field(gt=0.0, le=30.0)] = 10.0


Scalar = str | int | float | bool


class FloatDim(_Section):
    key: str
    type: Literal["float"]
    low: float
    high: float
    log: bool


class IntDim(_Section):
    key: str
    type: Literal["int"]
    low: int
    high: int
    log: bool


class CategoricalDim(_Section):
    key: str
    type: Literal["categorical"]
    choices: tuple[Scalar, ...] = Field(min_length=1)


Dimension = Annotated[FloatDim | IntDim | CategoricalDim, Field(discriminator="type")]


class PrunerParams(_Section):
    kind: Literal["median", "hyperband", "threshold", "none"]
    startup_trials: Annotated[int, Field(ge=0)]
    warmup_epochs: Annotated[int, Field(ge=0)]
    reduction_factor: Annotated[int, Field(ge=2)]
    threshold: float | None


class TuneParams(_Section):
    """``nnops tune``: the Optuna study over ``train.*`` (see docs/tuning.md).

    Every field is required: the values live in ``params.yaml``. The search space is checked
    against the ``train`` section in ``Params`` (each key must name a ``train`` param, and the
    bounds and choices must be values that section accepts).
    """

    study: str = Field(min_length=1)
    storage: str | None
    trials: PositiveInt
    timeout_s: Annotated[float, Field(gt=0.0)] | None
    jobs: PositiveInt
    metric: Literal["val_loss", "val_accuracy"]
    cv_folds: Annotated[int, Field(ge=2)] | None
    seed: int
    startup_trials: Annotated[int, Field(ge=0)]
    heartbeat_s: PositiveInt
    stale_after_s: PositiveInt
    pruner: PrunerParams
    space: tuple[Dimension, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> TuneParams:
        if self.pruner.kind == "threshold" and self.pruner.threshold is None:
            raise ValueError("tune.pruner.kind=threshold needs a tune.pruner.threshold; got null")
        if self.stale_after_s <= self.heartbeat_s:
            raise ValueError(
                "tune.stale_after_s must exceed tune.heartbeat_s; received "
                f"{self.stale_after_s} <= {self.heartbeat_s}"
            )
        for i, dim in enumerate(self.space):
            if isinstance(dim, FloatDim | IntDim):
                if dim.low > dim.high:
                    raise ValueError(
                        f"tune.space.{i} ({dim.key}): low must not exceed high; received "
                        f"low={dim.low}, high={dim.high}"
                    )
                if dim.log and dim.low <= 0:
                    raise ValueError(
                        f"tune.space.{i} ({dim.key}): a log scale needs low > 0; "
                        f"received low={dim.low}"
                    )
        keys = [d.key for d in self.space]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"tune.space: each key may appear once; repeated: {', '.join(twice)}")
        return self


class Params(_Section):
    """The whole of ``params.yaml``; ``validate`` and ``register`` are read as
    ``params.validate_`` and ``params.register_`` (the plain names belong to pydantic)."""

    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    validate_: ValidateParams = Field(alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    mlflow: MlflowParams = MlflowParams()
    # Optional as a section (a project that never tunes leaves it out); its fields have no defaults.
    tune: TuneParams | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _tune_space_fits_train(self) -> Params:
        if self.tune is not None:
            from nnops.tune_space import check_space

            check_space(self.tune.space, self.train)
        return self

    def flat(self) -> dict[str, Any]:
        """Return every param under its dotted ``params.yaml`` name."""
        return dict(_flatten(self.model_dump(mode="json", by_alias=True)))


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        items: list[tuple[str, Any]] = []
        for key, value in tree.items():
            items.extend(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return items
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        items = []
        for i, value in enumerate(tree):
            items.extend(_flatten(value, f"{prefix}.{i}"))
        return items
    return [(prefix, tree)]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Return the pydantic model that owns the key at ``loc`` (for suggestions)."""
    model: Any = Params
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(part) or model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        nxt = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nxt is None:
            return None
        model = nxt
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
    dotted = ".".join(str(p) for p in loc) or "<root>"
    received = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        allowed = sorted(f.alias or n for n, f in owner.model_fields.items()) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
        return f"{dotted}: unknown key{hint} (allowed here: {', '.join(allowed)})"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"{dotted}: received {received!r}; allowed: {allowed}"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind == "missing":
        return f"{dotted}: required key is missing"
    if kind in ("tuple_type", "list_type"):
        return f"{dotted}: received {received!r}; must be a list, e.g. [a, b] or []"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{dotted}: received {received!r}; must be a mapping of keys to values"
    message = error["msg"].lower().replace("input should be", "must be")
    return f"{dotted}: received {received!r}; {message}"


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    """Validate a params mapping.

    Args:
        raw: the parsed YAML document.
        source: where it came from, for error messages.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, received {raw!r}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: invalid params\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``.

    Args:
        path: the params file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
