"""Does predict_volume overlap the model with cutting and stitching? No GPU needed to find out.

Run: ``.venv/bin/python benchmarks/inference_pipeline.py`` (about 3 minutes on 2 cores).

A GPU call frees the CPU while the accelerator works; so does ``time.sleep``. A stub model
that sleeps T ms per batch therefore simulates a GPU of any speed. For an n^3 float32
volume, 3 classes, 64^3 windows, overlap 0.5, batch 8, Gaussian blending, it measures:

1. S, the stitching-only time: ``predict_volume`` with a model that costs nothing, run
   sequentially (cutting and stitching, nothing to overlap with);
2. T per batch such that the model time M = T x batches equals S;
3. the total time of the sequential route (``pipeline=False``) and of the pipelined one,
   each as a ratio to max(M, S). Perfect overlap gives 1.0; none gives 2.0.

Then the real 42.6 M-parameter U-Net on this CPU, where the model dominates: the
pipelined route against the sequential one, and the default (``pipeline=None``), which
runs a Keras model sequentially when no GPU is visible. Each figure is the fastest of
``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import helpers  # noqa: E402, F401  (before Keras: TensorFlow's fast CPU kernels)

PATCH, OVERLAP, CLASSES, BATCH = 64, 0.5, 3, 8


def zero_cost(batch: np.ndarray) -> np.ndarray:
    return np.broadcast_to(batch, (*batch.shape[:-1], CLASSES))


def sleeping(seconds: float):
    def model(batch: np.ndarray) -> np.ndarray:
        time.sleep(seconds)
        return zero_cost(batch)

    return model


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stub_rows(n: int, repeats: int) -> dict:
    from helpers.inference import predict_volume
    from helpers.patches import sliding_windows

    vol = np.random.default_rng(0).random((n, n, n), dtype=np.float32)
    batches = -(-len(sliding_windows(vol.shape, PATCH, OVERLAP)) // BATCH)

    def run(model, pipeline: bool) -> None:
        predict_volume(model, vol, PATCH, OVERLAP, BATCH, progress=False, pipeline=pipeline)

    stitch = best_time(lambda: run(zero_cost, False), repeats)
    model = sleeping(stitch / batches)
    model_time = best_time(lambda: [model(vol[:1, :1, :1, None]) for _ in range(batches)], 1)
    sequential = best_time(lambda: run(model, False), repeats)
    pipelined = best_time(lambda: run(model, True), repeats)
    floor = max(model_time, stitch)
    return {
        "n": n,
        "batches": batches,
        "stitch": stitch,
        "model": model_time,
        "sequential": sequential / floor,
        "pipelined": pipelined / floor,
    }


def unet_row(n: int, repeats: int) -> dict:
    from helpers.inference import predict_volume
    from helpers.model import build_unet

    model = build_unet(CLASSES, 1, PATCH)
    vol = np.random.default_rng(0).standard_normal((n, n, n), dtype=np.float32)
    model.predict_on_batch(np.zeros((BATCH, PATCH, PATCH, PATCH, 1), np.float32))

    def run(pipeline: bool) -> None:
        predict_volume(model, vol, PATCH, OVERLAP, BATCH, output="labels", progress=False, pipeline=pipeline)

    times = {}
    for _ in range(repeats):  # alternate, so a slow spell of the machine hits every route
        for pipeline in (False, True, None):
            times[pipeline] = min(times.get(pipeline, float("inf")), best_time(lambda p=pipeline: run(p), 1))
    return {"n": n, "sequential": times[False], "pipelined": times[True], "default": times[None]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--unet-size", type=int, default=128, help="volume side for the real U-Net (0: skip)")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    print(f"patch {PATCH}^3, overlap {OVERLAP}, {CLASSES} classes, batch {BATCH}, best of {args.repeats}\n")
    head = (
        f"{'volume':>7s} {'batches':>7s} | {'stitch S s':>10s} {'model M s':>9s} | "
        f"{'sequential':>10s} {'pipelined':>9s}   (total / max(M, S))"
    )
    print(head)
    print("-" * len(head))
    for n in args.sizes:
        r = stub_rows(n, args.repeats)
        print(
            f"{n:>6d}³ {r['batches']:>7d} | {r['stitch']:10.2f} {r['model']:9.2f} | "
            f"{r['sequential']:10.2f} {r['pipelined']:9.2f}"
        )
    print("target: pipelined <= 1.15; sequential is near 2 by construction (M = S)")
    if args.unet_size:
        import keras

        r = unet_row(args.unet_size, args.repeats)
        backend = f"Keras {keras.__version__}, {keras.config.backend()}"
        print(f"\nreal ResNet-18 U-Net on this CPU ({backend}), {r['n']}³, labels:")
        print(f"  sequential {r['sequential']:.2f} s, pipelined {r['pipelined']:.2f} s (ratio ", end="")
        print(f"{r['pipelined'] / r['sequential']:.3f}), default {r['default']:.2f} s ", end="")
        print(f"(ratio {r['default'] / r['sequential']:.3f}; target <= 1.02)")


if __name__ == "__main__":
    main()
