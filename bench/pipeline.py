"""The pipeline against the textbook script, side by side in one run, with a per-stage profile.

Runs in a fresh copy of the repository (the tracked files, ``git init``, as the tests'
``make_project`` does), one thing after the other so the figures are comparable:

    python bench/pipeline.py                 # digits: textbook, full repro, the loop, no-op repro
    python bench/pipeline.py --quick         # the same with 5 epochs and fewer repeats
    python bench/pipeline.py --source npz --rows 70000 [--scale 4]

On the embedded digits data it times the textbook script (a Keras Sequential MLP 64-64-softmax,
adam, sparse categorical cross-entropy, 5 epochs, then predict; in its own process), a full
``dvc repro``, the edit-and-rerun loop (``dvc exp run -S train.epochs=5 -S
train.learning_rate=0.002``: train and what follows) and the no-op ``dvc repro`` against ``dvc
--version``, each with warm stage processes (``nnops.warm``, the default: the full repro starting
with no server, the loop with the server up and again with none) and with ``NNOPS_WARM=0``.
With ``--source npz`` it generates MNIST-shaped data (uint8 pixels, 10 classes,
``x_train/y_train/x_test/y_test``) and runs the data stages at a small size (the framework's
baseline), at ``--rows`` and at ``--scale`` times that, so growth with the data is visible.

Each stage process reports, through a ``sitecustomize`` hook on ``PYTHONPATH``, its wall time,
the seconds its main thread spent importing (each outermost import, nested ones included; waiting
for a background import counts), its CPU seconds (user + system: the fairer figure when other
processes share the cores) and its peak RSS; work = wall - import. For a warm stage the CPU and
peak RSS are those of the stage process and its warm child together.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import yaml

from nnops.stage import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUTPUTS = ("data/", "models/", "reports/", "mlruns/", "mlartifacts/", "mlserver/")
DATA_STAGES = ("ingest", "validate", "preprocess")

TEXTBOOK = """
import numpy as np, keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(
    x.astype("float32") / 16.0, y, test_size=0.15, random_state=42, stratify=y)
model = keras.Sequential([
    keras.Input(shape=(x.shape[1],)),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=5, batch_size=32, verbose=0)
pred = model.predict(x_test, verbose=0).argmax(axis=1)
print("textbook accuracy", float((pred == y_test).mean()))
"""

# Loaded by every Python process of a run (PYTHONPATH); a stage process (pipelines/*.py)
# appends one JSON line to $NNOPS_BENCH_LOG at exit: wall, import seconds, peak RSS.
SITECUSTOMIZE = """
import os, sys, time
_log = os.environ.get("NNOPS_BENCH_LOG")
if _log:
    import atexit, importlib._bootstrap as _boot, json, resource, threading
    _start, _depth, _spent, _pid = time.perf_counter(), [0], [0.0], os.getpid()
    _find, _main = _boot._find_and_load, threading.get_ident()

    def _timed_find_and_load(name, import_):
        # the main thread's imports only (a background import overlaps the work)
        if _depth[0] or threading.get_ident() != _main:
            return _find(name, import_)
        _depth[0] += 1
        t = time.perf_counter()
        try:
            return _find(name, import_)
        finally:
            _spent[0] += time.perf_counter() - t
            _depth[0] -= 1

    _boot._find_and_load = _timed_find_and_load

    def _report():
        script = sys.argv[0] if sys.argv else ""
        # a warm child inherits this hook from its server: its stage process reports for it
        if "pipelines" not in script or os.getpid() != _pid:
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        warm = getattr(sys.modules.get("nnops.warm"), "last_child", None) or {}
        row = {
            "stage": os.path.splitext(os.path.basename(script))[0],
            "wall": time.perf_counter() - _start,
            "imports": _spent[0],
            "cpu": usage.ru_utime + usage.ru_stime + warm.get("cpu_s", 0.0),
            "peak_mb": max(usage.ru_maxrss, warm.get("maxrss_kb", 0)) / 1024,
            "warm": bool(warm),
        }
        with open(_log, "a") as fh:
            fh.write(json.dumps(row) + "\\n")

    atexit.register(_report)
"""


def env(
    hook: Path | None = None, log: Path | None = None, warm: Path | None = None
) -> dict[str, str]:
    """The environment stages get: this venv first, no telemetry, the profiling hook if asked;
    warm servers in ``warm`` (a directory of the bench's own), or none (``NNOPS_WARM=0``)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "NNOPS_"))}
    out.update(NNOPS_WARM="1", NNOPS_WARM_DIR=str(warm)) if warm else out.update(NNOPS_WARM="0")
    out.update(QUIET_ENV)
    out.update(
        PATH=f"{BIN}{os.pathsep}{out.get('PATH', '')}",
        GIT_AUTHOR_NAME="nnops bench",
        GIT_AUTHOR_EMAIL="bench@nnops.local",
        GIT_COMMITTER_NAME="nnops bench",
        GIT_COMMITTER_EMAIL="bench@nnops.local",
    )
    if hook and log:
        out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), out.get("PYTHONPATH")]))
        out["NNOPS_BENCH_LOG"] = str(log)
    return out


def copy_project(dest: Path, params: dict | None = None) -> Path:
    """Copy the repository's tracked source files (no outputs) into a fresh git repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        if rel.startswith(OUTPUTS) and not rel.endswith(".gitignore"):
            continue
        if not (REPO / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    if params:
        path = dest / "params.yaml"
        data = yaml.safe_load(path.read_text())
        for section, values in params.items():
            data[section].update(values)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return commit_all(dest, "bench")


def commit_all(dest: Path, message: str, *first: list[str]) -> Path:
    """``git init`` ``dest``, run the commands ``first`` there, then commit everything in it."""
    for cmd in (["git", "init", "-q", "-b", "main"], *first, ["git", "add", "-A"],
                ["git", "commit", "-qm", message]):  # fmt: skip
        subprocess.run(cmd, cwd=dest, env=env(), check=True, capture_output=True)
    return dest


class Runner:
    """Runs commands in one project copy, collecting the stage processes' profile rows."""

    def __init__(self, root: Path, work: Path, warm: Path | None = None):
        self.root = root
        self.hook = work / "hook"
        self.hook.mkdir(exist_ok=True)
        (self.hook / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
        self.log = work / "stages.jsonl"
        self.warm = warm

    def run(self, cmd: list[str], profile: bool = True) -> tuple[float, list[dict], str]:
        """Run ``cmd``; return its wall seconds, the stage rows it produced and its output."""
        self.log.write_text("")
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=self.root, text=True, capture_output=True,
            env=env(self.hook, self.log, self.warm) if profile else env(warm=self.warm),
        )  # fmt: skip
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return wall, rows, proc.stdout + proc.stderr


def stage_table(title: str, rows: list[dict], total: float) -> None:
    """Print one row per stage: wall, import and work seconds, peak RSS."""
    print(title)
    print(f"  {'stage':<12}{'wall s':>8}{'import s':>10}{'work s':>8}{'cpu s':>8}{'peak MB':>9}"
          "  run")  # fmt: skip
    for r in rows:
        work = r["wall"] - r["imports"]
        print(
            f"  {r['stage']:<12}{r['wall']:>8.2f}{r['imports']:>10.2f}{work:>8.2f}"
            f"{r['cpu']:>8.2f}{r['peak_mb']:>9.0f}  {'warm' if r.get('warm') else 'cold'}"
        )
    stages = sum(r["wall"] for r in rows)
    print(f"  {'stages':<12}{stages:>8.2f}   (the command took {total:.2f} s; the rest is DVC)")


def median_walls(runs: list[tuple[Runner, list[str]]], repeats: int) -> list[float]:
    """Median wall seconds of ``repeats`` runs of each ``(runner, cmd)``, taken in turn (one of
    each, then again) so that a slow spell of the shared machine hits them all alike."""
    walls: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, (runner, cmd) in enumerate(runs):
            walls[i].append(runner.run(cmd, profile=False)[0])
    return [statistics.median(w) for w in walls]


def floor_project(dest: Path, stages: list[str]) -> Path:
    """A DVC project with ``stages`` chained, each a shell ``echo`` with one dep (the one before's
    output) and one cached output: what a no-op ``dvc repro`` costs DVC itself for a pipeline of
    this many stages, before any deps, params or outputs of nnops's own."""
    dest.mkdir(parents=True)
    graph, before = {}, None
    for name in stages:
        stage = {"cmd": f"echo {name} > {name}.txt", "outs": [f"{name}.txt"]}
        if before:
            stage["deps"] = [f"{before}.txt"]
        graph[name], before = stage, name
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": graph}, sort_keys=False))
    dvc = str(BIN / "dvc")
    return commit_all(dest, "floor", [dvc, "init", "-q"],
                      [dvc, "config", "core.analytics", "false"], [dvc, "repro", "-q"])  # fmt: skip


def digits(args: argparse.Namespace, work: Path) -> None:
    """Textbook, full repro, the loop and the no-op repro on the embedded digits data, with warm
    stage processes (the default) and without (``NNOPS_WARM=0``), side by side."""
    from nnops.warm_server import stop_servers

    params = {"train": {"epochs": 5}} if args.quick else None
    dvc = str(BIN / "dvc")
    loop_cmd = [dvc, "exp", "run", "-S", "train.epochs=5", "-S", "train.learning_rate=0.002"]
    loop_back = [dvc, "exp", "run", "-S", "train.epochs=5", "-S", "train.learning_rate=0.003"]
    cold_root = copy_project(work / "cold" / "repo", params)
    cold = Runner(cold_root, work / "cold")
    servers = work / "servers"
    servers.mkdir(mode=0o700)
    warm = Runner(copy_project(work / "warm" / "repo", params), work / "warm", warm=servers)
    epochs = yaml.safe_load((cold_root / "params.yaml").read_text())["train"]["epochs"]
    try:
        textbook, _, out = cold.run([sys.executable, "-c", TEXTBOOK], profile=False)
        accuracy = next(line for line in out.splitlines() if line.startswith("textbook accuracy"))
        cold_full, cold_full_rows, _ = cold.run([dvc, "repro"])
        cold_loop, cold_loop_rows, _ = cold.run(loop_cmd)
        # Warm: the full repro starts with no server (its first stage starts one); the loop
        # then finds it up, as in an edit-and-rerun session; and once more after `nnops warm
        # stop` (a loop after the server's idle timeout, 600 s by default).
        full, full_rows, _ = warm.run([dvc, "repro"])
        loop, loop_rows, _ = warm.run(loop_cmd)
        stop_servers(servers)
        loop_first, _, _ = warm.run(loop_back, profile=False)
        repeats = 3 if args.quick else 7
        stages = list(yaml.safe_load((cold_root / "dvc.yaml").read_text())["stages"])
        floor = Runner(floor_project(work / "floor" / "repo", stages), work / "floor")
        noop, floor_noop, alone = median_walls(
            [(warm, [dvc, "repro"]), (floor, [dvc, "repro"]), (warm, [dvc, "--version"])], repeats
        )
    finally:
        stop_servers(servers)

    print(f"nnops pipeline on the embedded digits data (train.epochs={epochs}), one run:")
    print(f"  textbook script (Sequential 64-64-softmax, 5 epochs, predict): {textbook:.2f} s"
          f"  [{accuracy}]")  # fmt: skip
    print(f"  the loop is `{' '.join(loop_cmd[1:])}`")
    print(
        f"  warm stages (default): full dvc repro {full:.2f} s (no server at the start); "
        f"loop {loop:.2f} s (server up), {loop_first:.2f} s (no server at the start)"
    )
    print(f"  NNOPS_WARM=0:          full dvc repro {cold_full:.2f} s; loop {cold_loop:.2f} s")
    print()
    stage_table("full dvc repro, warm stages, per stage:", full_rows, full)
    print()
    stage_table("the loop (dvc exp run), warm stages, per stage:", loop_rows, loop)
    print()
    stage_table("full dvc repro, NNOPS_WARM=0, per stage:", cold_full_rows, cold_full)
    print()
    stage_table("the loop, NNOPS_WARM=0, per stage:", cold_loop_rows, cold_loop)
    print()
    print(f"no-op dvc repro (median of {repeats}, taken in turn with the two below): {noop:.2f} s")
    print(
        f"  DVC's floor: no-op dvc repro of {len(stages)} chained echo stages, one dep and one "
        f"output each: {floor_noop:.2f} s"
    )
    print(f"  dvc --version: {alone:.2f} s")
    print(f"no-op / DVC floor: {noop / floor_noop:.2f}x")
    print()
    print(
        f"loop / textbook: {loop / textbook:.2f}x  (server up; {loop_first / textbook:.2f}x "
        f"with none at the start; NNOPS_WARM=0: {cold_loop / textbook:.2f}x)"
    )
    print(
        f"full repro / textbook: {full / textbook:.2f}x  (no server at the start; "
        f"NNOPS_WARM=0: {cold_full / textbook:.2f}x)"
    )


def write_mnist_like(path: Path, rows: int, seed: int = 0) -> int:
    """Write an MNIST-shaped npz: ``rows`` uint8 images of 28x28 in 10 classes, 1/7 of them test.

    Each class has a prototype image; a pixel keeps its class's value with probability 0.8, else
    it is noise. Returns the bytes of the pixel arrays.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(10, 784), dtype=np.uint8)
    y = rng.integers(0, 10, size=rows).astype(np.uint8)
    x = np.empty((rows, 784), dtype=np.uint8)
    for start in range(0, rows, 10_000):
        part = slice(start, min(start + 10_000, rows))
        n = part.stop - part.start
        noise = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        keep = rng.random((n, 784), dtype=np.float32) < 0.8
        x[part] = np.where(keep, prototypes[y[part]], noise)
    n_test = rows // 7
    images = x.reshape(rows, 28, 28)
    with path.open("wb") as fh:
        np.savez(fh, x_train=images[n_test:], y_train=y[n_test:], x_test=images[:n_test],
                 y_test=y[:n_test])  # fmt: skip
    return x.nbytes


def npz(args: argparse.Namespace, work: Path) -> None:
    """The data stages on generated MNIST-shaped data at a baseline size, --rows and x --scale."""
    sizes = [1000, args.rows] + ([args.rows * args.scale] if args.scale > 1 else [])
    dvc = str(BIN / "dvc")
    results = []
    for rows in sizes:
        folder = work / f"rows-{rows}"
        folder.mkdir()
        params = {"data": {"source": "npz", "path": "inputs/bench.npz"}}
        root = copy_project(folder / "repo", params)
        data_bytes = write_mnist_like(root / "inputs" / "bench.npz", rows)
        runner = Runner(root, folder)  # NNOPS_WARM=0: each stage's own time and memory
        wall, stage_rows, _ = runner.run([dvc, "repro", "preprocess"])
        results.append((rows, data_bytes, wall, {r["stage"]: r for r in stage_rows}))
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    base = results[0][3]
    print("data stages on generated MNIST-shaped data (uint8 28x28, 10 classes), one run:")
    for rows, data_bytes, wall, stages in results:
        mb = data_bytes / 2**20
        print()
        print(f"rows {rows:,} (pixels {mb:.0f} MB; dvc repro preprocess {wall:.2f} s)")
        print(
            f"  {'stage':<12}{'seconds':>8}{'import s':>10}{'cpu s':>8}{'peak MB':>9}"
            f"{'over base':>11}"
        )
        for name in DATA_STAGES:
            r = stages[name]
            over = r["peak_mb"] - base[name]["peak_mb"]
            print(
                f"  {name:<12}{r['wall']:>8.2f}{r['imports']:>10.2f}{r['cpu']:>8.2f}"
                f"{r['peak_mb']:>9.0f}{over:>8.0f} MB ({over / mb:.1f}x the pixels)"
            )
    if len(results) == 3:
        print()
        print(f"growth from {sizes[1]:,} to {sizes[2]:,} rows ({args.scale}x the data):")
        for name in DATA_STAGES:
            a, b = results[1][3][name], results[2][3][name]
            wa, wb = a["wall"] - a["imports"], b["wall"] - b["imports"]
            print(f"  {name:<12} work {wa:.2f} s -> {wb:.2f} s ({wb / wa:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("digits", "npz"), default="digits")
    parser.add_argument("--rows", type=int, default=70_000, help="npz: rows to generate")
    parser.add_argument("--scale", type=int, default=4, help="npz: also run at this many times "
                        "--rows (1: only --rows)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="5 epochs, fewer repeats")
    parser.add_argument("--keep", type=Path, help="run in this (empty) directory and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="nnops-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        (npz if args.source == "npz" else digits)(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
