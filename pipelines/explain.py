"""explain stage: what the model looks at and where it fails (slices, weak classes)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from nnops.config import Params
from nnops.io import atomic_path, read_json
from nnops.stage import run_stage

log = logging.getLogger("nnops.explain")


def main(args: argparse.Namespace, params: Params) -> None:
    from nnops import slices
    from nnops.errors import NnopsError

    data, out = Path(args.data), Path(args.out)
    meta = read_json(data / "meta.json")
    try:
        with np.load(data / "test.npz", allow_pickle=False) as npz:
            test = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise NnopsError(f"{data / 'test.npz'}: cannot read ({exc})") from None
    # Fail on a bad slice column before TensorFlow is even imported.
    slices.select_slices(slices.slice_arrays(test), params.evaluate.slice_by, str(data))

    from nnops.distribute import import_tensorflow

    import_tensorflow()  # without its C++ start-up noise
    import keras

    from nnops.explain import explain_test_set

    try:
        model = keras.models.load_model(args.model, safe_mode=True, compile=False)
    except (OSError, ValueError) as exc:
        raise NnopsError(f"{args.model}: cannot load the Keras model ({exc})") from None
    result = explain_test_set(model, test, meta, params.evaluate, seed=params.train.seed)
    for name, content in result.files.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(content)
    for stale in out.iterdir():  # e.g. attribution grids left from an image run before a csv run
        if stale.is_file() and stale.name not in result.files:
            stale.unlink()
    log.info("wrote %s to %s", ", ".join(sorted(result.files)), out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="models/model.keras", help="the trained Keras model")
    p.add_argument("--data", default="data/processed", help="the processed data directory")
    p.add_argument("--out", default="reports/explain", help="where figures and tables go")
    return p


if __name__ == "__main__":
    sys.exit(run_stage("explain", main, parser()))
