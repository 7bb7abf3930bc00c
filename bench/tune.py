"""A full grid against ``nnops tune`` with pruning, over one search space, on the digits data.

Both sides train through the same objective (``nnops.tune_trial.run_trial``: ``train.fit`` on
the train split, scored by validation accuracy, a child run per trial in MLflow) in one fresh
copy of the repository, one after the other:

- grid: every combination of the space (Optuna's GridSampler, no pruner), each to the last epoch;
- tuner: the ``nnops tune`` command (TPE, median pruner), in its own process like a user runs it.

    python bench/tune.py [--epochs 15] [--trials 10] [--keep DIR]

The last line reads ``grid epochs / tuner epochs: R.Rx, best val accuracy grid G.GGGG tuner
T.TTTT``. The tuner's wall time includes starting Python and TensorFlow; the grid's does not.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import BIN, copy_project, env

SPACE = {  # the grid's points; the tuner searches the same choices
    "train.learning_rate": [0.001, 0.003, 0.01],
    "train.hidden_layers": [1, 2],
    "train.hidden_layers.*.units": [32, 128],
    "train.batch_size": [32, 128],
}


def tune_section(trials: int) -> dict:
    space = [{"key": k, "type": "categorical", "choices": v} for k, v in SPACE.items()]
    pruner = {"kind": "median", "startup_trials": 2, "warmup_epochs": 2,
              "reduction_factor": 3, "threshold": None}  # fmt: skip
    return {"trials": trials, "metric": "val_accuracy", "startup_trials": 4, "jobs": 1,
            "pruner": pruner, "space": space}  # fmt: skip


def configure(root: Path, epochs: int, trials: int) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["train"]["epochs"] = epochs
    params["tune"].update(tune_section(trials))
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run_grid(root: Path) -> tuple[float, int, float, int]:
    """Every grid point through ``run_trial``; returns best value, epochs, seconds, points."""
    import optuna

    from nnops import distribute
    from nnops.config import load_params
    from nnops.tracking import connect
    from nnops.tune import _parent, begin
    from nnops.tune_study import Setup, storage_url

    params = load_params(root / "params.yaml")
    uri = connect(params.mlflow)
    tune = params.tune.model_copy(update={"study": "grid"})
    data_dir = str(root / "data/processed")
    setup, _ = begin(Setup(params, tune, storage_url(tune, root), uri, data_dir))
    distribute.import_tensorflow()
    from nnops.train_data import load_processed
    from nnops.tune_trial import run_trial

    data, _, _ = load_processed(setup.data_dir)
    runtime = distribute.configure_runtime(params.train)
    points = len(list(itertools.product(*SPACE.values())))
    study = optuna.load_study(
        study_name="grid", storage=setup.storage,
        sampler=optuna.samplers.GridSampler(SPACE, seed=0), pruner=optuna.pruners.NopPruner(),
    )  # fmt: skip
    parent = _parent(setup)
    start = time.perf_counter()
    study.optimize(lambda t: run_trial(t, setup, data, runtime, parent), n_trials=points)
    seconds = time.perf_counter() - start
    epochs = sum(int(t.user_attrs["epochs"]) for t in study.trials)
    return study.best_value, epochs, seconds, len(study.trials)


def run_tuner(root: Path) -> tuple[float, int, float, int, str]:
    """``nnops tune`` as a user runs it; returns best value, epochs, seconds, trials, states."""
    import optuna

    start = time.perf_counter()
    subprocess.run([str(BIN / "nnops"), "tune", "--study", "tuner"], cwd=root, env=env(),
                   check=True, capture_output=True)  # fmt: skip
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name="tuner", storage=f"sqlite:///{root / 'optuna.db'}")
    epochs = sum(int(t.user_attrs["epochs"]) for t in study.trials)
    count = {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED")}
    states = ", ".join(f"{n} {s.lower()}" for s, n in count.items())
    return study.best_value, epochs, seconds, len(study.trials), states


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="train.epochs of every trial")
    parser.add_argument("--trials", type=int, default=10, help="the tuner's trials")
    parser.add_argument("--keep", type=Path, help="keep the project copy here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnops-bench-tune-") as tmp:
        root = args.keep or Path(tmp) / "repo"
        root.mkdir(parents=True, exist_ok=True)
        copy_project(root)
        configure(root, args.epochs, args.trials)
        subprocess.run([str(BIN / "dvc"), "repro", "preprocess"], cwd=root, env=env(),
                       check=True, capture_output=True)  # fmt: skip
        import os

        os.chdir(root)  # the tracking store and study database live at the copy's root
        t_best, t_epochs, t_wall, t_trials, states = run_tuner(root)
        g_best, g_epochs, g_wall, g_points = run_grid(root)
    print(f"space: {' x '.join(f'{k} {v}' for k, v in SPACE.items())}; {args.epochs} epochs each")
    print(f"grid : {g_points} combinations, {g_epochs} epochs, {g_wall:.1f} s, "
          f"best val accuracy {g_best:.4f}")  # fmt: skip
    print(f"tuner: {t_trials} trials ({states}), {t_epochs} epochs, {t_wall:.1f} s "
          f"(incl. process start), best val accuracy {t_best:.4f}")  # fmt: skip
    print(f"grid epochs / tuner epochs: {g_epochs / t_epochs:.1f}x, "
          f"best val accuracy grid {g_best:.4f} tuner {t_best:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
