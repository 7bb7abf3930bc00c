"""Time the validate stage on MNIST-shaped data (70,000 x 784 uint8 pixels, 10 classes).

Runs, side by side in one go: the real stage process (``python pipelines/validate.py``), a bare
``import great_expectations`` (the floor any GX stage pays), the naive suite (one GX
expectation pair per pixel column) on a few columns, extrapolated to all 784, and
``nnops validate-batch`` on a 10,000-row batch of that shape against the stage's profile.
Prints the wall times and their ratios. Usage: ``python bench/validate_stage.py [--columns N]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from nnops.ingest import from_arrays
from nnops.raw import write_raw

REPO = Path(__file__).resolve().parents[1]

NAIVE = """
import sys, time
import pandas as pd
import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.data_context.types.base import ProgressBarsConfig
frame = pd.read_parquet(sys.argv[1])
columns = [c for c in frame.columns if c.startswith("px_")][: int(sys.argv[2])]
start = time.perf_counter()
context = gx.get_context(mode="ephemeral")
context.variables.progress_bars = ProgressBarsConfig(globally=False)
asset = context.data_sources.add_pandas("naive").add_dataframe_asset("raw")
batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
    batch_parameters={"dataframe": frame})
suite = gx.ExpectationSuite(name="naive", expectations=[
    e for c in columns for e in (gxe.ExpectColumnValuesToNotBeNull(column=c),
                                 gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0,
                                                                   max_value=255))])
assert batch.validate(suite).success
print(time.perf_counter() - start)
"""


def mnist_like(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse uint8 28x28 images (about a fifth of the pixels lit) and labels 0..9."""
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    lit = rng.random((n, 28, 28)) < 0.19
    x[lit] = rng.integers(1, 256, size=int(lit.sum()), dtype=np.uint8)
    return x, rng.integers(0, 10, size=n)


def timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``cmd``; return its wall time and the process (its CPU time goes to ``CPU``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[cmd[-1]] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, proc


# CPU seconds (user + sys) per command, keyed by its last argument: steadier than wall time
# on a machine shared with other jobs.
CPU: dict[str, float] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--columns", type=int, default=16, help="columns for the naive suite")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="nnops-bench-") as tmp:
        root = Path(tmp)
        (x_train, y_train), (x_test, y_test) = mnist_like(rng, 60_000), mnist_like(rng, 10_000)
        raw = from_arrays("mnist", x_train, y_train, x_test, y_test, None, (0.0, 255.0))
        write_raw(raw, root / "raw")
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"]["source"] = "mnist"
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        stage = [sys.executable, str(REPO / "pipelines/validate.py"), "--raw", str(root / "raw"),
                 "--out", str(root / "out"), "--params", str(root / "params.yaml")]  # fmt: skip
        t_stage, proc = timed(stage, REPO)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        gx_import = "import great_expectations"
        t_import, _ = timed([sys.executable, "-c", gx_import], REPO)
        t_python, _ = timed([sys.executable, "-c", "pass"], REPO)
        naive_cmd = [sys.executable, "-c", NAIVE, str(root / "raw/data.parquet"), str(args.columns)]
        _, naive = timed(naive_cmd, REPO)
        if naive.returncode != 0:
            print(naive.stderr, file=sys.stderr)
            return 1
        t_naive_cols = float(naive.stdout.strip().splitlines()[-1])
        batch_x, _ = mnist_like(rng, 10_000)
        np.savez(root / "batch.npz", x_raw=batch_x)
        nnops = str(Path(sys.executable).parent / "nnops")
        batch_cmd = [nnops, "validate-batch", "--reference", str(root / "out/profile.json"),
                     str(root / "batch.npz")]  # fmt: skip
        t_batch, batch = timed(batch_cmd, REPO)
        if batch.returncode != 0:
            print(batch.stdout, batch.stderr, file=sys.stderr)
            return 1
        t_naive = t_naive_cols * 784 / args.columns
    print(f"data: 70,000 x 784 uint8 pixels, 10 classes ({raw.frame.shape[1]} columns)")
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (wall times grow with load; CPU times do not)"
    )
    print(f"validate stage process (read, profile, GX, report): {t_stage:6.2f} s  (goal < 8 s)")
    print(f"validate-batch, 10,000 x 784 batch vs profile:      {t_batch:6.2f} s  (goal < 5 s)")
    print(f"bare python start:                                  {t_python:6.2f} s")
    print(f"bare 'import great_expectations':                   {t_import:6.2f} s")
    print(f"naive GX suite, {args.columns} columns, validation only:      {t_naive_cols:6.2f} s")
    print(f"naive GX suite extrapolated to 784 columns:         {t_naive:6.2f} s")
    c_stage, c_import = CPU[str(root / "params.yaml")], CPU[gx_import]
    print(f"validate stage process, CPU (user + sys):           {c_stage:6.2f} s")
    print(
        f"validate-batch, CPU (user + sys):                   {CPU[str(root / 'batch.npz')]:6.2f} s"
    )
    print(f"bare 'import great_expectations', CPU:              {c_import:6.2f} s")
    print(f"ratio stage / bare GX import (wall):                {t_stage / t_import:6.2f}x")
    print(f"ratio stage / bare GX import (CPU):                 {c_stage / c_import:6.2f}x")
    print(f"ratio naive (784 cols, validation only) / stage:    {t_naive / t_stage:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
