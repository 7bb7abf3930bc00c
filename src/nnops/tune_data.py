"""What data a tuning study tunes: the identity of ``data/processed`` recorded on the study.

A trial's score only means something beside trials scored on the same train and validation
rows. The study records the processed data's identity when it is created (``DATA_ATTR``: a hash
of the train and validation arrays and the scaling, with the source, label column, feature
columns, classes and row counts in readable form) and each trial records the hash
(``TRIAL_HASH_ATTR``). Resuming a study on other data is refused, saying what differs; so is a
study of an older nnops that holds trials but no record (nothing says what they ran on); and
``--apply`` refuses a best trial scored on other data than ``data/processed`` holds now.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnops import catalog
from nnops.errors import NnopsError
from nnops.io import read_json

DATA_ATTR = "data"
"""Study user attribute: the identity of the processed data the study tunes (``identity``)."""
TRIAL_HASH_ATTR = "data_hash"
"""Trial user attribute: the hash of the processed data the trial was scored on."""


def identity(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    spec: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The identity of the data trials train and score on: a hash and what it holds, readably.

    Args:
        train: raw features and labels of the train split.
        val: the same of the validation split; None when it is empty.
        spec: ``preprocessing.json`` (the scaling the model's first layer applies).
        meta: ``meta.json`` (source, label column, feature and class names).
    """
    x, y = np.asarray(train[0], np.float32), np.asarray(train[1], np.int64)
    xv, yv = (x[:0], y[:0]) if val is None else val
    xv, yv = np.asarray(xv, np.float32), np.asarray(yv, np.int64)
    arrays = {"train": {"x_raw": x, "y": y}, "val": {"x_raw": xv, "y": yv}}
    blob = catalog.data_hash(arrays) + json.dumps(dict(spec), sort_keys=True, default=str)
    return {
        "hash": hashlib.sha256(blob.encode()).hexdigest(),
        "source": str(meta.get("source", "")),
        "label_column": meta.get("label_column"),
        "features": [str(f) for f in meta.get("feature_names") or []],
        "classes": [str(c) for c in meta.get("class_names") or []],
        "rows": {"train": len(y), "val": len(yv)},
        "scaling": str(spec.get("method", "")),
    }


def read_identity(folder: str | Path) -> dict[str, Any]:
    """``identity`` of the train and validation splits in ``data/processed`` (test is not read).

    Args:
        folder: the preprocess stage's output folder.
    """
    folder = Path(folder)
    train = catalog.read_split_arrays(catalog.split_path(folder, "train"))
    val = catalog.read_split_arrays(catalog.split_path(folder, "val"))
    meta = read_json(folder / catalog.PROCESSED_META)
    spec = read_json(folder / catalog.PREPROCESSING_JSON)
    v = (val["x_raw"], val["y"]) if len(val["y"]) else None
    return identity((train["x_raw"], train["y"]), v, spec, meta)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} ({shown})"


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Say in words how two identities differ, e.g. ``classes 3 (a, b, c) -> 2 (x, y)``.

    Args:
        old: the recorded identity.
        new: the current one.
    """
    said = []
    if old.get("source") != new.get("source"):
        said.append(f"source {old.get('source')!r} -> {new.get('source')!r}")
    labels = old.get("label_column"), new.get("label_column")
    if None not in labels and labels[0] != labels[1]:  # only CSV sources name one
        said.append(f"label column {labels[0]!r} -> {labels[1]!r}")
    same = {}
    for key, what in (("features", "feature columns"), ("classes", "classes")):
        a, b = list(old.get(key) or []), list(new.get(key) or [])
        same[key] = a == b
        if sorted(a) == sorted(b) and a != b:
            said.append(f"the same {what} in another order")
        elif a != b:
            said.append(f"{what} {_names(a)} -> {_names(b)}")
    rows_a, rows_b = old.get("rows") or {}, new.get("rows") or {}
    if rows_a != rows_b:
        said.append(
            f"train/val rows {rows_a.get('train')}/{rows_a.get('val')} -> "
            f"{rows_b.get('train')}/{rows_b.get('val')}"
        )
    if old.get("scaling") != new.get("scaling"):
        said.append(f"scaling {old.get('scaling')!r} -> {new.get('scaling')!r}")
    if not said:
        return "same columns, classes and row counts, other rows"
    if same["features"] and same["classes"] and len(said) == 1:
        return f"same columns and classes, {said[0]}"
    return ", ".join(said)


def _ways_on(study: str, storage: str) -> str:
    return (
        "tune this data in a new study (--study NAME, or tune.study in params.yaml), or delete "
        f"the old one: optuna delete-study --study-name {study} --storage {storage}"
    )


def check_study(
    study: Any, name: str, storage: str, current: Mapping[str, Any], where: str
) -> None:
    """Record ``current`` on a study that has no record and no trials; refuse any other study
    whose record differs from it, or that holds trials without a record (an older nnops's).

    Call it under the study lock, so that two processes creating the study record one identity.

    Args:
        study: the Optuna study.
        name: its name (``tune.study``).
        storage: the storage URL, masked, for messages.
        current: ``read_identity`` of the processed data the trials would use.
        where: that folder, for messages.
    """
    recorded = study.user_attrs.get(DATA_ATTR)
    if recorded is None:
        n = len(study.get_trials(deepcopy=False))
        if n:
            raise NnopsError(
                f"study {name!r} (tune.study) in {storage} holds {n} trial(s) from an nnops that "
                f"did not record what data they ran on, so it cannot tell whether they can be "
                f"compared with trials on {where}; {_ways_on(name, storage)}"
            )
        study.set_user_attr(DATA_ATTR, dict(current))
        return
    if recorded.get("hash") != current["hash"]:
        raise NnopsError(
            f"study {name!r} (tune.study) in {storage} was run on other data than {where} holds "
            f"now ({differences(recorded, current)}), so its trials cannot be compared with "
            f"trials on this data; {_ways_on(name, storage)}"
        )


def check_best(summary: Mapping[str, Any], folder: str | Path) -> None:
    """Refuse to apply a best trial that was not scored on the processed data as it is now.

    Args:
        summary: ``tune.summarize``'s (``best_trial``, ``data_hash``, ``data``, ``study``).
        folder: ``data/processed``, which ``dvc exp run`` will train the winner on.
    """
    best, trial_hash = summary.get("best_trial"), summary.get("data_hash")
    head = f"--apply: best trial {best} of study {summary.get('study')!r}"
    if not trial_hash:
        raise NnopsError(f"{head} has no record of the data it was scored on; not applied")
    current = read_identity(folder)
    if trial_hash == current["hash"]:
        return
    recorded = summary.get("data") or {}
    what = f" ({differences(recorded, current)})" if recorded.get("hash") == trial_hash else ""
    raise NnopsError(
        f"{head} was scored on other data than {folder} holds now{what}; not applied: tune "
        "this data first (nnops tune --study NAME)"
    )


def check_up_to_date(data_dir: str | Path) -> None:
    """Refuse to tune a ``data/processed`` that DVC says is out of date with ``params.yaml`` and
    the data (a ``data.*`` param edited, the CSV changed, preprocess not rerun): the study would
    tune other data than the pipeline trains on, and ``--apply`` would train the winner there.

    Only for the pipeline's own ``data/processed`` in a DVC project; any other folder is the
    user's to keep current.

    Args:
        data_dir: the folder the trials read.
    """
    import shutil
    import subprocess
    import sys

    if (
        Path(data_dir).resolve() != catalog.PROCESSED_DIR.resolve()
        or not Path("dvc.yaml").is_file()
    ):
        return
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        return
    cmd = [dvc, "status", "--json", "--with-deps", "preprocess"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    try:
        status = json.loads(proc.stdout or "{}") if proc.returncode == 0 else {}
    except ValueError:  # not JSON: a DVC message of its own; tuning does not depend on it
        status = {}
    # Changed dependencies (params, data, code) make the folder stale; an output touched by hand
    # is the user's doing. check_params tracks every key, so any edit (train.* too) names it.
    stale = sorted(stage for stage, changes in status.items() if stage != "check_params" and any(
        isinstance(c, dict) and "changed deps" in c for c in changes))  # fmt: skip
    if stale:
        raise NnopsError(
            f"{data_dir} is out of date: `dvc status` names {', '.join(stale)} (params.yaml or "
            "the data changed since preprocess ran), so the trials would tune other data than the "
            "pipeline trains on; run `dvc repro preprocess` first"
        )
