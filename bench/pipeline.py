"""Wall time of each pipeline stage, a full and a no-op ``dvc repro``, and the textbook script.

Everything runs in one fresh copy of the repository on the embedded default (digits data,
embedded sqlite MLflow store, ``params.yaml`` as committed), one after the other, so the numbers
are comparable:

    python bench/pipeline.py [--keep DIR]

The textbook script is the plain Keras MLP (Dense 64 relu, Dense 64 relu, softmax; adam; 5 epochs;
batch 32) fitted on the same preprocessed digits arrays, in its own Python process like a stage.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from nnops.stage import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUTPUTS = ("data/", "models/", "reports/", "mlruns/", "mlartifacts/", "mlserver/")

TEXTBOOK = """
import numpy as np, keras
train = np.load("data/processed/train.npz", allow_pickle=False)
test = np.load("data/processed/test.npz", allow_pickle=False)
classes = int(max(train["y"].max(), test["y"].max())) + 1
model = keras.Sequential([
    keras.Input(shape=train["x"].shape[1:]),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(classes, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train["x"], train["y"], epochs=5, batch_size=32, verbose=0)
print(model.evaluate(test["x"], test["y"], verbose=0)[1])
"""


def env() -> dict[str, str]:
    """The environment stages get: this venv first, no telemetry, no inherited store."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    out.update(QUIET_ENV)
    out.update(
        PATH=f"{BIN}{os.pathsep}{out.get('PATH', '')}",
        GIT_AUTHOR_NAME="nnops bench",
        GIT_AUTHOR_EMAIL="bench@nnops.local",
        GIT_COMMITTER_NAME="nnops bench",
        GIT_COMMITTER_EMAIL="bench@nnops.local",
    )
    return out


def copy_project(dest: Path) -> Path:
    """Copy the repository's source files (no outputs, no store) into a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        if (rel.startswith(OUTPUTS) and not rel.endswith(".gitignore")) or not (
            REPO / rel
        ).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, env=env(), check=True, capture_output=True)
    return dest


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd`` to completion; return its wall time and CPU time (user + system).

    CPU time does not grow when other processes compete for the cores, so it is the fairer
    figure on a shared machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def repro_by_stage(cwd: Path) -> tuple[float, list[tuple[str, float]]]:
    """Run a full ``dvc repro``; time each stage from the moment DVC announces it."""
    marks: list[tuple[str, float]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"], cwd=cwd, env=env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Running stage '"):
            marks.append((line.split("'")[1], time.perf_counter()))
    proc.wait()
    end = time.perf_counter()
    if proc.returncode != 0:
        sys.exit("dvc repro failed:\n" + "".join(lines[-60:]))
    bounds = [t for _, t in marks[1:]] + [end]
    return end - start, [(name, stop - t) for (name, t), stop in zip(marks, bounds, strict=True)]


def best(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """The lowest wall time and the lowest CPU time of repeated runs."""
    return min(w for w, _ in samples), min(c for _, c in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="run in this (empty) directory and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="nnops-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        root = copy_project(work)
        dvc = str(BIN / "dvc")
        full, stages = repro_by_stage(root)
        noop = best([timed([dvc, "repro"], root) for _ in range(5)])
        dvc_alone = best([timed([dvc, "--version"], root) for _ in range(5)])
        textbook, _ = timed([sys.executable, "-c", TEXTBOOK], root)
        epochs = yaml.safe_load((root / "params.yaml").read_text())["train"]["epochs"]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(name) for name, _ in stages) + 2
    print("nnops pipeline on the embedded default (digits, sqlite MLflow store), one run:")
    print(f"  {'stage':<{width}}{'seconds':>9}{'share':>8}")
    for name, seconds in stages:
        print(f"  {name:<{width}}{seconds:>9.2f}{seconds / full:>8.0%}")
    print(f"  {'full dvc repro':<{width}}{full:>9.2f}")
    print()
    train = dict(stages).get("train", float("nan"))
    print("                           wall s   cpu s   (best of 5)")
    print(f"  no-op dvc repro          {noop[0]:7.2f} {noop[1]:7.2f}")
    print(f"  dvc --version, DVC alone {dvc_alone[0]:7.2f} {dvc_alone[1]:7.2f}")
    print(
        f"  no-op / DVC alone        {noop[0] / dvc_alone[0]:6.1f}x {noop[1] / dvc_alone[1]:6.1f}x"
    )
    print()
    print(f"  textbook script          {textbook:6.2f} s  (Sequential.fit, 5 epochs, batch 32)")
    print(f"  train stage / textbook   {train / textbook:6.2f}x  ({epochs} epochs, MLflow logging)")
    print(f"  full repro / textbook    {full / textbook:6.2f}x")


if __name__ == "__main__":
    main()
