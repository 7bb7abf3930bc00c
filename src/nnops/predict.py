"""Batch prediction: load a model by URI, alias or path, score a CSV or npz, write probabilities.

``nnops-predict --model models:/nnops-mlp@champion --input rows.csv --out predictions.csv``

The model takes raw, unscaled rows (its preprocessing layer is inside), so the input holds the
same raw feature columns the training data had. ``prediction_table`` is pure; reading
the input rows lives in :mod:`nnops.predict_input`; the rest reads and writes files at the edge.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnops.errors import NnopsError, few
from nnops.predict_input import read_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score raw rows, with what is known about its input and classes."""

    ref: str
    predict: Callable[[np.ndarray], np.ndarray]
    n_features: int | None
    class_names: list[str] | None
    feature_names: list[str] | None = None
    """The input columns in the order the model takes them, when its MLmodel records them."""


def prediction_table(proba: np.ndarray, class_names: Sequence[str] | None) -> Any:
    """Return one row per input: the predicted class name, its index and every class probability.

    Args:
        proba: class probabilities, shape (rows, classes).
        class_names: the name of each class index (indices are used when None).
    """
    import pandas as pd

    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise NnopsError(f"the model returned shape {proba.shape}; expected (rows, classes)")
    names = (
        [str(c) for c in class_names] if class_names else [str(i) for i in range(proba.shape[1])]
    )
    if len(names) != proba.shape[1]:
        raise NnopsError(f"{len(names)} class names for a model with {proba.shape[1]} outputs")
    index = proba.argmax(axis=1)
    table = pd.DataFrame(
        {
            "row": np.arange(1, len(proba) + 1),
            "predicted": [names[i] for i in index],
            "predicted_index": index,
            "probability": proba.max(axis=1),
        }
    )
    for k, name in enumerate(names):
        table[f"p_{name}"] = proba[:, k]
    return table


# --- Edges: loading models and reading/writing files ---------------------------------------------


def _registry_class_names(ref: str) -> list[str] | None:
    """Read the class names the register stage recorded on a registered version, if any."""
    import mlflow

    body = ref.removeprefix("models:/")
    client = mlflow.MlflowClient()
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in body and not body.startswith("m-"):
            name, number = body.split("/", 1)
            version = client.get_model_version(name, number)
        else:
            return None
    except Exception:  # a logged-model URI or an older registry: no recorded names
        return None
    names = (version.tags or {}).get("nnops.class_names")
    return json.loads(names) if names else None


def load_model(ref: str, tracking_uri: str | None = None) -> LoadedModel:
    """Load a ``.keras`` file, or an MLflow model (``models:/name@alias``, ``runs:/...``).

    Args:
        ref: a path to a ``.keras`` file or an MLflow model URI.
        tracking_uri: the MLflow store that holds registered models and runs.
    """
    if ref.endswith(".keras") and "://" not in ref and ":/" not in ref:
        if not Path(ref).is_file():  # before TensorFlow's start-up: a typo fails at once
            raise NnopsError(f"{ref}: model file not found")
        from nnops.catalog import load_model
        from nnops.scoring import predict_proba

        model = load_model(ref)
        return LoadedModel(
            ref,
            lambda x: predict_proba(model, np.asarray(x, dtype=np.float32)),
            int(model.input_shape[-1]),
            None,
        )
    from nnops.distribute import import_tensorflow

    import_tensorflow()  # without its C++ start-up noise
    import keras
    import mlflow

    keras.config.disable_interactive_logging()  # no progress bars from the pyfunc wrapper
    if tracking_uri:
        check_store_exists(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(ref)
    except Exception as exc:
        raise NnopsError(
            f"{ref}: cannot load the model from {mlflow.get_tracking_uri()} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    n_features = None
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.is_tensor_spec():
        shape = schema.inputs[0].shape
        n_features = int(shape[-1]) if shape and shape[-1] > 0 else None
    elif schema is not None:
        n_features = len(schema.inputs)
    names = _registry_class_names(ref) if ref.startswith("models:/") else None
    recorded = model.metadata.metadata or {}
    columns = recorded.get("feature_names")
    names = names or recorded.get("class_names") or None
    columns = [str(c) for c in columns] if isinstance(columns, list) and columns else None
    return LoadedModel(ref, lambda x: np.asarray(model.predict(x)), n_features, names, columns)


def check_reference(
    input_path: str | Path,
    reference: str | Path,
    key: str = "x_raw",
    header: bool = True,
    refuse_drift: bool = False,
    model_columns: Sequence[str] | None = None,
) -> list[str] | None:
    """Refuse a batch whose columns or shape differ from the training profile; warn on drift.

    Returns the training feature names (the columns to score, in order); None, unchecked, when
    the model takes other columns than the profile describes (a model of another dataset).

    Drift refuses the batch too when ``refuse_drift`` is set or the profile's
    ``validate.drift_refuse_predict`` param is true.

    Args:
        input_path: the batch file.
        reference: the training profile (``reports/validation/profile.json``).
        key: the array to read from an npz file.
        header: whether the CSV's first line names the columns.
        refuse_drift: refuse a drifted batch instead of warning.
        model_columns: the columns the model recorded, if it did.
    """
    from nnops import validate_batch as vb

    profile = vb.load_profile(reference)
    if model_columns and sorted(model_columns) != sorted(profile["feature_names"]):
        log.warning(
            "the model takes other columns than the training profile %s describes (another "
            "dataset): the batch is not checked against it",
            reference,
        )
        return None
    batch = vb.read_batch(input_path, profile, key, header)
    if batch.kind == "csv":  # extra columns (an id, a note) are ignored, as the model ignores them
        extra = vb.unknown_columns(batch, profile)
        if extra and all(c in batch.frame.columns for c in profile["feature_names"]):
            log.info("%s: ignoring column(s) the model does not take: %s", input_path,
                     few(extra, 5))  # fmt: skip
            batch = vb.Batch(batch.frame.drop(columns=extra), batch.path, batch.kind)
    problems = vb.schema_problems(batch, profile)
    if problems:
        raise NnopsError(
            f"{input_path}: does not match the training data ({reference}): {'; '.join(problems)}"
        )
    report = vb.check_batch(batch, profile, str(reference))
    refuse = refuse_drift or profile["validate"].get("drift_refuse_predict", False)
    for e in report["expectations"]:
        if e["success"]:
            continue
        message = f"{input_path}: {e['name']}: {e['column']}: observed {e['observed']}"
        if e["name"] == "drift" and refuse:
            raise NnopsError(f"{message} (refused: drift, see nnops validate-batch)")
        log.warning("%s (bound %s)", message, e["bound"])
    return list(profile["feature_names"])


def predict_file(
    model_ref: str,
    input_path: str | Path,
    out_path: str | Path,
    tracking_uri: str | None = None,
    meta_path: str | Path | None = None,
    key: str = "x_raw",
    header: bool = True,
    reference: str | Path | None = None,
    refuse_drift: bool = False,
) -> Any:
    """Score a file and write the predictions CSV; return the prediction table.

    Args:
        model_ref: a ``.keras`` path or an MLflow model URI.
        input_path: the CSV or npz file of raw rows.
        out_path: where the predictions CSV goes.
        tracking_uri: the MLflow store for ``models:/`` and ``runs:/`` URIs.
        meta_path: a ``meta.json`` with ``class_names`` (and ``feature_names``).
        key: the array to read from an npz file.
        header: whether the CSV's first line names the columns.
        reference: a training profile to check the batch against first (:func:`check_reference`).
        refuse_drift: refuse a drifted batch instead of warning.
    """
    from nnops import catalog
    from nnops.io import atomic_path, read_json, require_writable

    out = Path(out_path)
    if out.is_dir():
        raise NnopsError(f"{out}: is a directory; --out takes the predictions CSV file to write")
    if out.parent.exists() and not out.parent.is_dir():
        raise NnopsError(f"{out}: {out.parent} is not a directory")
    if out.exists() and Path(input_path).exists() and os.path.samefile(out, input_path):
        raise NnopsError(f"{out}: --out is the input file; write the predictions to another file")
    require_writable([out.parent], "the predictions (--out)", who="nnops predict")
    if meta_path is None and Path(model_ref).resolve() == catalog.MODEL.resolve():
        # the workspace's model goes with the workspace's processed data: its class names
        default = catalog.PROCESSED_DIR / catalog.PROCESSED_META
        meta_path = default if default.is_file() else None
    model = load_model(model_ref, tracking_uri)
    names = (
        check_reference(input_path, reference, key, header, refuse_drift, model.feature_names)
        if reference
        else None
    )
    meta = read_json(meta_path) if meta_path else {}
    # The model's own column order wins: the workspace's profile may be of a later dataset.
    columns = model.feature_names or meta.get("feature_names") or names
    x = read_rows(input_path, model.n_features, columns, key, header)
    try:
        proba = model.predict(x)
    except Exception as exc:
        raise NnopsError(f"{model_ref}: prediction failed ({type(exc).__name__}: {exc})") from None
    table = prediction_table(proba, meta.get("class_names") or model.class_names)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False)
    log.info("wrote %d predictions to %s", len(table), out_path)
    return table


def parser(prog: str = "nnops predict") -> argparse.ArgumentParser:
    """Return the command-line parser shared by ``nnops predict`` and ``pipelines/predict.py``.

    Args:
        prog: the program name shown in usage and error lines.
    """
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="models:/nnops-mlp@champion",
        help="a .keras file or an MLflow URI: models:/NAME@ALIAS, models:/NAME/VERSION, "
        "runs:/RUN_ID/model (default: %(default)s)",
    )
    p.add_argument("--input", required=True, help="a CSV of raw feature columns, or an npz file")
    p.add_argument("--out", required=True, help="the predictions CSV to write")
    p.add_argument("--meta", help="meta.json with class_names/feature_names (default for "
                   "models/model.keras: data/processed/meta.json)")  # fmt: skip
    p.add_argument("--key", default="x_raw", help="array name inside an npz (default: x_raw)")
    p.add_argument("--no-header", action="store_true", help="the CSV has no header line")
    p.add_argument(
        "--reference",
        help="training profile to check the batch against before scoring "
        "(default: reports/validation/profile.json when present; 'none' to skip)",
    )
    p.add_argument("--refuse-drift", action="store_true", help="refuse a drifted batch")
    p.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the project's embedded store)",
    )
    return p


def default_tracking_uri() -> str:
    """The project's store: ``$MLFLOW_TRACKING_URI``, else the one ``params.yaml`` names.

    Outside a project (no ``params.yaml`` here) there is no store to guess: say so rather than
    create an empty ``./mlflow.db``.
    """
    from nnops.config import load_params
    from nnops.tracking import resolve_tracking_uri

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if not Path("params.yaml").is_file():
        raise NnopsError(
            f"no MLflow store to load the model from: {Path.cwd()} holds no params.yaml; run in "
            "the project directory, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    return resolve_tracking_uri(load_params().mlflow, Path.cwd())


def check_store_exists(uri: str) -> None:
    """Refuse an embedded store that does not exist (MLflow would create an empty one) or is
    damaged.

    Args:
        uri: the tracking URI.
    """
    from nnops.tracking import check_store

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise NnopsError(
            f"{uri.removeprefix('sqlite:///')}: no MLflow store there (run the pipeline first, "
            "or pass --tracking-uri)"
        )
    check_store(uri)


def _reference(flag: str | None) -> str | None:
    """The profile to check batches against: the flag, else the project's when present."""
    from nnops.validate_batch import DEFAULT_REFERENCE

    if flag:
        return None if flag == "none" else flag
    return DEFAULT_REFERENCE if Path(DEFAULT_REFERENCE).is_file() else None


def main(argv: list[str] | None = None, prog: str = "nnops-predict") -> int:
    """Run ``nnops predict`` (or ``nnops-predict``); return the exit status (2 on bad input).

    Args:
        argv: arguments, for tests; defaults to ``sys.argv[1:]``.
        prog: the program name used in messages.
    """
    from nnops.config import ConfigError
    from nnops.stage import start_command

    args = start_command(parser(prog), argv)
    try:
        uri = args.tracking_uri or (
            None if args.model.endswith(".keras") else default_tracking_uri()
        )
        table = predict_file(
            args.model, args.input, args.out, uri, args.meta, args.key, header=not args.no_header,
            reference=_reference(args.reference), refuse_drift=args.refuse_drift,
        )  # fmt: skip
    except (NnopsError, ConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write refused midway (a full disk): one line, not a traceback
        from nnops.stage import UNWRITABLE, refused_write

        if exc.errno not in UNWRITABLE:
            raise
        print(f"{prog}: error: {refused_write(exc)}", file=sys.stderr)
        return 2
    counts = table["predicted"].value_counts().to_dict()
    print(f"{prog}: {len(table)} rows -> {args.out} ({counts})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
