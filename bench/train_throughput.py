"""Time the train stage's fit against the textbook ``model.fit`` on MNIST-shaped data, side by side.

Both train the same network (Dense 64 relu, Dense 64 relu, Dense 10 softmax; adam; batch 32;
5 epochs) on the same generated 60,000 x 784 images with 10 classes. The textbook side is exactly
``model.fit(x_train, y_train, epochs=5)`` on pixels scaled to [0, 1]; the stage side is
``nnops.train.fit`` under the stage's runtime setup with the train params of params.yaml (raw
pixels with Rescaling inside the model, the in-graph loop, XLA for a run this long). Each side
runs in a fresh Python process, the two alternating, so neither inherits the other's warm-up or
TensorFlow settings. Prints both times (medians over repeats), the ratio and the accuracies, and
how close each side comes to the hardware: the MLP's forward and backward FLOPs per sample times
the samples trained per second, against the rate of a large float32 matmul timed with the same
TensorFlow in the same process.

    python bench/train_throughput.py [--repeats 3] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return MNIST-shaped raw pixels (0..255, float32) and labels that a small MLP can learn.

    Each class is a fixed sparse pattern (the same for every seed); ``seed`` draws the labels and
    the heavy pixel noise, so train and test sets differ but share the classes.

    Args:
        n: number of images.
        seed: seed for labels and noise.
    """
    patterns = np.random.default_rng(12345)
    prototypes = patterns.uniform(0, 255, size=(10, 784)) * (patterns.random((10, 784)) < 0.05)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    x = prototypes[y] + rng.normal(0, 255, size=(n, 784))
    return np.clip(x, 0, 255).astype("float32"), y.astype("int64")


LAYERS = (784, 64, 64, 10)
PEAK_N = 2048  # the matmul that stands for the machine's peak: (N x N) @ (N x N), float32


def mlp_flops_per_sample(layers: tuple[int, ...] = LAYERS) -> int:
    """Matmul FLOPs of one training example through the MLP, forward and backward.

    Forward: ``2 * in * out`` per layer. Backward: the weight gradient of every layer (the same
    again) and the input gradient of every layer but the first (nothing needs the input's).
    Biases, activations, softmax and the optimizer are elementwise and left out.
    """
    pairs = list(zip(layers[:-1], layers[1:], strict=True))
    weights = sum(2 * a * b for a, b in pairs)
    inputs = sum(2 * a * b for a, b in pairs[1:])
    return 2 * weights + inputs


def matmul_peak(n: int = PEAK_N, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` float32 ``(n x n) @ (n x n)`` matmuls in TensorFlow."""
    import tensorflow as tf

    a = tf.random.stateless_uniform([n, n], seed=[1, 2])
    b = tf.random.stateless_uniform([n, n], seed=[3, 4])
    tf.linalg.matmul(a, b).numpy()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def textbook(x, y, x_test, y_test, epochs: int) -> dict[str, float]:
    """The textbook run, as written in the book."""
    import keras

    model = keras.Sequential(
        [
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train = x / 255.0
    ends: list[float] = []  # for the steady rate only; the textbook run itself is unchanged
    clock = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: ends.append(time.perf_counter()))
    start, cpu = time.perf_counter(), time.process_time()
    history = model.fit(x_train, y, epochs=epochs, verbose=0, callbacks=[clock])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    test = model.evaluate(x_test / 255.0, y_test, verbose=0, batch_size=1024)[1]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "epoch_ends": ends,
        "train_accuracy": history.history["accuracy"][-1],
        "test": test,
    }


def stage(x, y, x_test, y_test, epochs: int, params_path: str) -> dict[str, float]:
    """The train stage's runtime setup and fit with the project's params (batch 32, no backup)."""
    from nnops.config import load_params
    from nnops.distribute import configure_runtime
    from nnops.train import TrainData, fit

    params = load_params(params_path).train.model_copy(update={"epochs": epochs, "batch_size": 32})
    runtime = configure_runtime(params)
    data = TrainData(x, y, None, None, 10, {"method": "rescale", "scale": 1 / 255, "offset": 0.0})
    ends: list[float] = []
    clock = [lambda *_: ends.append(time.perf_counter())]
    start, cpu = time.perf_counter(), time.process_time()
    model, result = fit(data, params, runtime, backup_dir=None, on_epoch=clock)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    test = model.evaluate(x_test, y_test, verbose=0, batch_size=1024)[1]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "epoch_ends": ends,
        "train_accuracy": result.history[-1]["accuracy"],
        "test": test,
        "steps_per_execution": result.steps_per_execution,
        "input_pipeline": params.input_pipeline,
    }


def run_side(args: argparse.Namespace) -> None:
    """Run one side in this process and print its figures as JSON."""
    from nnops.stage import quiet_environment

    quiet_environment()
    x, y = generate(args.samples, seed=0)
    x_test, y_test = generate(10_000, seed=1)
    if args.side == "textbook":
        out = textbook(x, y, x_test, y_test, args.epochs)
    else:
        out = stage(x, y, x_test, y_test, args.epochs, args.params)
    import keras
    import tensorflow as tf

    flops = mlp_flops_per_sample() * args.samples
    out["gflops"] = flops * args.epochs / out["seconds"] / 1e9
    ends = out.pop("epoch_ends")  # after the first epoch: without start-up, tracing, compiling
    out["steady_gflops"] = (
        flops * (len(ends) - 1) / (ends[-1] - ends[0]) / 1e9 if len(ends) > 1 else 0.0
    )
    out["peak_gflops"] = matmul_peak()
    out.update(tensorflow=tf.__version__, keras=keras.__version__)
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; medians shown")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--side", choices=["textbook", "stage"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return

    rows: dict[str, list[dict]] = {"textbook": [], "stage": []}
    for _ in range(args.repeats):
        for side in ("textbook", "stage"):
            cmd = [sys.executable, __file__, "--side", side, "--samples", str(args.samples),
                   "--epochs", str(args.epochs), "--params", args.params]  # fmt: skip
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{side} side failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            rows[side].append(json.loads(lines[-1].removeprefix("RESULT ")))

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[side])

    info = rows["stage"][0]
    print(
        f"train throughput: {args.samples} x 784, 10 classes, {args.epochs} epochs, batch 32, "
        f"{args.repeats} repeat(s); TensorFlow {info['tensorflow']}, Keras {info['keras']}, "
        f"{os.cpu_count()} CPU(s)"
    )
    print(
        f"stage: input_pipeline={info['input_pipeline']}, "
        f"{info['steps_per_execution']} steps per compiled call"
    )
    for side in ("textbook", "stage"):
        times = ", ".join(f"{r['seconds']:.1f}" for r in rows[side])  # wall seconds
        print(
            f"  {side:9s} {med(side, 'seconds'):6.1f} s  (runs: {times})  "
            f"train accuracy {med(side, 'train_accuracy'):.4f}  "
            f"test accuracy {med(side, 'test'):.4f}"
        )
    ratio = med("textbook", "seconds") / med("stage", "seconds")
    print(f"speed-up: {ratio:.2f}x (textbook time / stage time)")
    cpu_ratio = med("textbook", "cpu_seconds") / med("stage", "cpu_seconds")
    print(
        f"CPU time: textbook {med('textbook', 'cpu_seconds'):.1f} s, stage "
        f"{med('stage', 'cpu_seconds'):.1f} s, ratio {cpu_ratio:.2f}x (less sensitive to a "
        "shared machine's load than wall time)"
    )
    gap = med("stage", "test") - med("textbook", "test")
    print(f"test accuracy, stage minus textbook: {gap:+.4f}")
    flops = mlp_flops_per_sample()
    peak = statistics.median(r["peak_gflops"] for side in rows for r in rows[side])
    print(
        f"hardware: {flops / 1e3:.1f} kFLOP per sample (forward + backward matmuls); "
        f"float32 matmul peak {peak:.1f} GFLOP/s ({PEAK_N}x{PEAK_N}, same TensorFlow, same runs)"
    )
    for side in ("textbook", "stage"):
        achieved, steady = med(side, "gflops"), med(side, "steady_gflops")
        print(
            f"  {side:9s} achieved {achieved:6.2f} GFLOP/s = {achieved / peak:.1%} of the peak "
            f"(whole fit); after epoch 1 {steady:6.2f} GFLOP/s = {steady / peak:.1%}"
        )


if __name__ == "__main__":
    main()
