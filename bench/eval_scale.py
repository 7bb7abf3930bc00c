"""evaluate and explain at MNIST scale: time, CPU and peak memory against the framework's baseline.

Builds ``data/processed`` for generated MNIST-shaped data (``--rows`` x 784 integer pixels
0..255, ten classes) with the real preprocess library, trains ``--epochs`` with the real train
stage, then runs, one after the other in fresh processes:

- the framework baseline of each stage: the same imports, the model loaded, one row scored (and
  for explain one gradient taken: TensorFlow's gradient machinery starts on first use);
- the evaluate and explain stages themselves (``pipelines/*.py``).

Each row prints wall seconds, CPU seconds (user + system) and peak RSS, and each stage's peak
above its baseline as a multiple of the data it holds (evaluate: the raw features of all three
splits; explain: those of the test split). Goals (issue 15): under 10 s each, and under 2x.

    python bench/eval_scale.py [--rows 70000] [--epochs 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from nnops.stage import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]

BASELINE = """
import sys
import numpy as np
from nnops.distribute import import_tensorflow
import_tensorflow()
import keras, sklearn.metrics, matplotlib.figure
if sys.argv[1] == "evaluate":
    import mlflow
model = keras.saving.load_model("models/model.keras", safe_mode=True, compile=False)
row = np.zeros((1, model.inputs[0].shape[-1]), np.float32)
model(row)
if sys.argv[1] == "explain":  # the gradient machinery's own start-up
    from nnops.attribution import gradient_x_input
    gradient_x_input(model, row, np.zeros(1, np.int32))
"""


def make_project(root: Path, rows: int, epochs: int) -> None:
    """params.yaml, data/processed (real preprocess library) and a trained model (real stage)."""
    import pandas as pd

    from nnops import preprocess
    from nnops.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["epochs"] = epochs
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 255, size=(10, 784))
    y = rng.integers(0, 10, size=rows)
    noise = rng.normal(0, 90, size=(rows, 784))
    x = np.clip(templates[y] * 0.15 + 100 + noise, 0, 255).round().astype(np.float32)
    names = [f"pixel_{i}" for i in range(784)]
    frame = pd.DataFrame(x, columns=names).assign(label=y)
    meta = {
        "source": "npz",
        "feature_names": names,
        "class_names": [str(i) for i in range(10)],
        "value_range": [0.0, 255.0],
        "image_shape": [28, 28],
    }
    arrays, spec = preprocess.make_splits(frame, meta, params.split, "auto", ())
    out = root / "data" / "processed"
    preprocess.write_processed(out, arrays, spec, preprocess.processed_meta(meta, arrays, spec, ()))
    # train logs validate's report as an artifact; the data above is valid by construction
    (root / "reports" / "validation").mkdir(parents=True)
    (root / "reports" / "validation" / "validation.json").write_text('{"success": true}\n')
    run(root, [str(REPO / "pipelines" / "train.py")])


def env(root: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    out.update(QUIET_ENV, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    return out


def run(root: Path, args: list[str]) -> tuple[float, float, float]:
    """Run ``python args`` in ``root``; return wall s, CPU s and peak RSS in MB of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=root, env=env(root), stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed with exit code {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=70_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="build the project here and keep it")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        make_project(args.build_only, args.rows, args.epochs)
        return
    with tempfile.TemporaryDirectory(prefix="nnops-eval-scale-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        # Built in a child: Linux carries a parent's peak RSS into the children it forks, so
        # this process stays small for the peaks measured below to be the stages' own.
        build = [__file__, "--rows", str(args.rows), "--epochs", str(args.epochs)]
        run(root, [*build, "--build-only", str(root)])
        meta = json.loads((root / "data" / "processed" / "meta.json").read_text())
        width = len(meta["feature_names"])
        held = {s: n * width * 4 / 2**20 for s, n in meta["splits"].items()}  # float32 x_raw
        data = {"evaluate": sum(held.values()), "explain": held["test"]}
        print(f"{args.rows} rows x 784, load average {os.getloadavg()[0]:.1f} at start")
        print(f"{'process':<20} {'wall s':>7} {'cpu s':>7} {'peak MB':>8}")
        for stage in ("evaluate", "explain"):
            base = run(root, ["-c", BASELINE, stage])
            got = run(root, [str(REPO / "pipelines" / f"{stage}.py")])
            for name, (wall, cpu, peak) in ((f"{stage} baseline", base), (stage, got)):
                print(f"{name:<20} {wall:7.2f} {cpu:7.2f} {peak:8.0f}")
            ratio = (got[2] - base[2]) / data[stage]
            print(
                f"{stage}: peak above baseline / data held ({data[stage]:.0f} MB): {ratio:.2f}x; "
                f"wall {got[0]:.2f} s, cpu {got[1]:.2f} s (baseline cpu {base[1]:.2f} s)"
            )


if __name__ == "__main__":
    main()
