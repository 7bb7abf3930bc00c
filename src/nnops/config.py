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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from nnops.io import read_yaml
from nnops.params_errors import describe
from nnops.secrets import redact_text, redact_url, url_secret

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """Raised when ``params.yaml`` cannot be read or holds an invalid value."""


class _Section(BaseModel):
    """A params section. Fields carry no defaults: ``params.yaml`` is the only place values live,
    so a key missing from it is an error naming the key, never a silent value from the code."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Strict types: a YAML ``true`` is not the integer 1, ``"5"`` is not 5, and ``.inf``/``.nan`` are
# never a usable number. Floats accept integers (``connect_timeout_s: 10``).
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Fraction = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, lt=1.0)]
UnitFraction = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]
Name = Annotated[str, Field(strict=True, min_length=1)]

Source = Literal["digits", "mnist", "fashion_mnist", "npz", "csv"]


# data.path of embedded sources: dvc.yaml lists ${data.path} as ingest's dependency, so it must
# name a file that exists; this one explains itself and is never read.
PLACEHOLDER = "inputs/embedded.txt"


class DataParams(_Section):
    source: Source
    path: str | None
    url: str | None
    url_env: str | None
    auth_env: str | None
    sha256: str | None
    label_column: Name
    exclude_columns: tuple[str, ...]
    cache_dir: Name

    @model_validator(mode="after")
    def _path_for_local_sources(self) -> DataParams:
        no_path = self.path in (None, "", PLACEHOLDER)
        if self.source in ("npz", "csv") and no_path and not (self.url or self.url_env):
            got = "neither" if not self.path else f"data.path={self.path!r}, the placeholder for "
            got += "" if not self.path else "embedded sources"
            raise ValueError(
                f"data.source={self.source!r} needs data.path (a local file) or data.url "
                f"(a download source); received {got}"
            )
        if self.url and self.url_env:
            raise ValueError(
                "data.url and data.url_env both set; give the URL in one place (data.url_env "
                "names an environment variable holding a URL that carries a secret)"
            )
        return self


class SplitParams(_Section):
    val_fraction: Fraction
    test_fraction: Fraction
    seed: Seed

    @model_validator(mode="after")
    def _leaves_training_data(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "split.val_fraction + split.test_fraction must be below 0.9 so that training "
                f"data remains; received {self.val_fraction} + {self.test_fraction}"
            )
        return self


class ValidateParams(_Section):
    min_rows: PositiveInt
    value_min: Float | None
    value_max: Float | None
    min_class_fraction: UnitFraction
    max_class_fraction: UnitFraction
    max_duplicate_fraction: UnitFraction
    # drift between the train and test partitions (and of new batches against the training profile)
    drift_alpha: Fraction
    drift_distance: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0)]
    drift_share: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, lt=1.0)]
    drift_switch_rows: PositiveInt
    drift_refuse_predict: Bool

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
    scaling: Literal["auto", "rescale", "standardize", "none"]


class HiddenLayer(_Section):
    units: PositiveInt
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish", "linear"]
    dropout: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, lt=1.0)]


class EarlyStoppingParams(_Section):
    enabled: Bool
    monitor: Literal["val_loss", "val_accuracy", "loss", "accuracy"]
    patience: PositiveInt
    min_delta: NonNegFloat
    restore_best_weights: Bool


class TrainParams(_Section):
    seed: Seed
    deterministic: Bool
    epochs: PositiveInt
    batch_size: PositiveInt
    hidden_layers: tuple[HiddenLayer, ...]
    allow_no_hidden_layers: Bool
    l2: NonNegFloat
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"]
    learning_rate: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, le=10.0)]
    lr_schedule: Literal["none", "cosine", "exponential"]
    lr_decay_rate: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, le=1.0)]
    early_stopping: EarlyStoppingParams
    steps_per_execution: PositiveInt
    input_pipeline: Literal["in_graph", "tf_data", "numpy"]
    device: Literal["auto", "cpu", "gpu"]
    mixed_precision: Bool
    distribute: Literal["none", "mirrored", "multi_worker"]

    @model_validator(mode="after")
    def _has_hidden_layers(self) -> TrainParams:
        if not self.hidden_layers and not self.allow_no_hidden_layers:
            raise ValueError(
                "train.hidden_layers: received []; list at least one layer, e.g. "
                "[{units: 64, activation: relu, dropout: 0.0}], or set "
                "train.allow_no_hidden_layers: true for a linear (softmax regression) model"
            )
        return self


class FitThresholds(_Section):
    min_train_accuracy: UnitFraction
    max_accuracy_gap: UnitFraction
    max_loss_gap: NonNegFloat
    min_val_loss_rise: NonNegFloat


class EvaluateParams(_Section):
    fit: FitThresholds
    learning_curve: tuple[Fraction | Literal[1.0], ...] | None


class ExplainParams(_Section):
    """The explain stage: attributions or permutation importances, and slice metrics."""

    enabled: Bool
    method: Literal["integrated_gradients", "gradient_x_input"]
    samples: PositiveInt
    steps: PositiveInt
    errors: PositiveInt
    repeats: PositiveInt
    slice_by: tuple[str, ...]
    slice_max_gap: UnitFraction


# Keys that moved to their own section; an old params.yaml gets one line per key saying where.
MOVED_KEYS = {
    "evaluate.explain": "explain.enabled",
    "evaluate.explain_method": "explain.method",
    "evaluate.explain_samples": "explain.samples",
    "evaluate.explain_steps": "explain.steps",
    "evaluate.explain_errors": "explain.errors",
    "evaluate.explain_repeats": "explain.repeats",
    "evaluate.slice_by": "explain.slice_by",
    "evaluate.slice_max_gap": "explain.slice_max_gap",
}


def _registrable(name: str) -> str:
    """A name the MLflow registry takes: no ``/`` or ``:``, no spaces at its ends."""
    if "/" in name or ":" in name or name != name.strip():
        raise ValueError(f"received {name!r}; a registered name has no '/' or ':' (models:/"
                         "NAME@ALIAS URIs use them) and no spaces at its ends")  # fmt: skip
    return name


class RegisterParams(_Section):
    model_name: Annotated[Name, AfterValidator(_registrable)]
    min_test_accuracy: UnitFraction
    require_good_fit: Bool
    compare_to_champion: Bool
    max_regression: UnitFraction
    min_unseen_test_rows: PositiveInt
    challenger_alias: Bool


class MlflowParams(_Section):
    tracking_uri: str | None
    experiment: Name
    connect_timeout_s: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, le=30.0)]


Scalar = str | int | float | bool


class FloatDim(_Section):
    key: str
    type: Literal["float"]
    low: Float
    high: Float
    log: Bool


class IntDim(_Section):
    key: str
    type: Literal["int"]
    low: Int
    high: Int
    log: Bool


class CategoricalDim(_Section):
    key: str
    type: Literal["categorical"]
    choices: tuple[Scalar, ...] = Field(min_length=1)


Dimension = Annotated[FloatDim | IntDim | CategoricalDim, Field(discriminator="type")]


class PrunerParams(_Section):
    kind: Literal["median", "hyperband", "threshold", "none"]
    startup_trials: Annotated[int, Field(strict=True, ge=0)]
    warmup_epochs: Annotated[int, Field(strict=True, ge=0)]
    reduction_factor: Annotated[int, Field(strict=True, ge=2)]
    threshold: Float | None


class TuneParams(_Section):
    """``nnops tune``: the Optuna study over ``train.*`` (see docs/tuning.md).

    Every field is required: the values live in ``params.yaml``. The search space is checked
    against the ``train`` section in ``Params`` (each key must name a ``train`` param, and the
    bounds and choices must be values that section accepts).
    """

    study: Name
    storage: str | None
    trials: PositiveInt
    timeout_s: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0)] | None
    jobs: PositiveInt
    metric: Literal["val_loss", "val_accuracy"]
    cv_folds: Annotated[int, Field(strict=True, ge=2)] | None
    seed: Seed
    startup_trials: Annotated[int, Field(strict=True, ge=0)]
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


# Where the secret of a URL-valued key goes instead.
_DATA_URL_HINT = (
    "DVC also prints it in its own messages. Put the URL in an environment variable named by "
    "data.url_env, or keep the bare URL here and the credentials in one named by data.auth_env. "
)
SECRET_HINTS = {
    "data.path": _DATA_URL_HINT,
    "data.url": _DATA_URL_HINT,
    "mlflow.tracking_uri": "Leave the password out (MLflow reads MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD), or set the key to null and the URL in MLFLOW_TRACKING_URI. ",
    "tune.storage": 'Pass the URL as `nnops tune --storage "$OPTUNA_STORAGE"`, or leave the '
    "password out (PostgreSQL reads PGPASSWORD or ~/.pgpass). ",
}


class Params(_Section):
    """The whole of ``params.yaml``; ``validate`` and ``register`` are read as
    ``params.validation`` and ``params.registry`` (the plain names belong to pydantic)."""

    data: DataParams
    split: SplitParams
    validation: ValidateParams = Field(alias="validate")
    preprocess: PreprocessParams
    train: TrainParams
    evaluate: EvaluateParams
    explain: ExplainParams
    registry: RegisterParams = Field(alias="register")
    mlflow: MlflowParams
    tune: TuneParams

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _no_secrets(self) -> Params:
        # check_params tracks every key, so dvc.lock (and DVC's run-cache) records each as written.
        for key, value in _flatten(self.model_dump(mode="json", by_alias=True)):
            secret = url_secret(value) if isinstance(value, str) else None
            if secret:
                hint = SECRET_HINTS.get(key, "")
                raise ValueError(
                    f"{key}={redact_url(value)!r} carries a secret ({secret}): params.yaml is "
                    f"committed and dvc.lock records every key as written. {hint}Keep the "
                    "secret in an environment variable (README, 'Secrets')"
                )
        return self

    @model_validator(mode="after")
    def _slices_are_carried(self) -> Params:
        # preprocess carries exactly data.exclude_columns as slice columns: check before training.
        missing = [c for c in self.explain.slice_by if c not in self.data.exclude_columns]
        if missing:
            have = ", ".join(self.data.exclude_columns) or "none"
            close = difflib.get_close_matches(missing[0], self.data.exclude_columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ValueError(
                f"explain.slice_by: column(s) {', '.join(map(repr, missing))} not found in "
                f"data.exclude_columns (available slice columns: {have}){hint} Slice columns "
                "are csv columns listed in data.exclude_columns (kept, but not features); a "
                "feature column cannot be a slice"
            )
        return self

    @model_validator(mode="after")
    def _tune_space_fits_train(self) -> Params:
        from nnops.tune_space import check_space

        check_space(self.tune.space, self.train)
        return self

    def flat(self) -> dict[str, Any]:
        """Return every param under its dotted ``params.yaml`` name, URL secrets masked."""
        return {
            key: redact_text(value) if isinstance(value, str) else value
            for key, value in _flatten(self.model_dump(mode="json", by_alias=True))
        }


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


# The tags pydantic puts in an error's location after a list index of tune.space
# (``tune.space.0.float.low``): not keys of params.yaml, so left out of the dotted name.
_DIMENSION_TAGS = {
    m.model_fields["type"].annotation.__args__[0] for m in (FloatDim, IntDim, CategoricalDim)
}


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
        lines = [describe(e, Params, MOVED_KEYS, _DIMENSION_TAGS) for e in exc.errors()]
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
        raw = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))
