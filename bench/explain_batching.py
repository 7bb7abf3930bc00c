"""Time batched integrated gradients against one example per gradient pass, side by side.

Both compute the same attributions (checked equal) for the same MNIST-shaped model and examples
in one process: the explain stage's way pushes every interpolation step of many examples through
one GradientTape pass (``chunk_rows`` rows), the naive way does one example (``steps`` rows) per
pass. Prints both times and the ratio.

    python bench/explain_batching.py [--examples 200] [--steps 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras

    from nnops.attribution import GRADIENT_ROWS, integrated_gradients

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(args.examples, 784)).astype(np.float32)
    target = rng.integers(0, 10, size=args.examples).astype(np.int32)

    def timed(chunk_rows: int) -> tuple[float, np.ndarray]:
        integrated_gradients(model, x[:2], target[:2], args.steps, chunk_rows=chunk_rows)  # warm
        times, out = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = integrated_gradients(model, x, target, args.steps, chunk_rows=chunk_rows)
            times.append(time.perf_counter() - start)
        return statistics.median(times), out

    naive_s, naive = timed(args.steps)  # one example per pass
    batched_s, batched = timed(GRADIENT_ROWS)
    np.testing.assert_allclose(batched, naive, rtol=1e-4, atol=1e-6)
    print(f"integrated gradients, {args.examples} examples x {args.steps} steps, 784 features")
    print(f"  one example per pass: {naive_s:8.3f} s (median of {args.repeats})")
    print(f"  batched, {GRADIENT_ROWS} rows: {batched_s:8.3f} s")
    print(f"  speed-up            : {naive_s / batched_s:8.1f}x")


if __name__ == "__main__":
    main()
