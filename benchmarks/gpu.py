"""One prepared script for a GPU machine: training and inference throughput of the course's U-Net.

Run on a GPU machine (no TensorFlow needed there)::

    KERAS_BACKEND=torch python benchmarks/gpu.py

It measures, for the full profile (64^3 patches, batch 8, 4 classes, the 42.6 M-parameter
ResNet-18 U-Net, Adam, Dice + cross-entropy):

- training patches/s (``train_on_batch``) in float32 and in mixed precision;
- inference patches/s (``predict_on_batch``) in both;
- ``predict_volume`` on a 256^3 volume (overlap 0.5, Gaussian blending, labels) as its
  time over the model-only time for the same number of batches, measured in the same run.

It prints one table. ``--smoke`` runs the same code at toy sizes on the CPU (a test calls
it), skipping mixed precision where no GPU is visible: TensorFlow's CPU build has no
float16 MaxPool3D.
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

FULL = {"patch": 64, "batch": 8, "classes": 4, "volume": 256, "warmup": 3, "steps": 20}
SMOKE = {"patch": 32, "batch": 2, "classes": 2, "volume": 48, "warmup": 1, "steps": 2}


def _timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start


def network(spec: str | None, n_classes: int, patch: int):
    """The ResNet-18 U-Net, or with ``spec`` ('module:factory', called as factory(n_classes,
    patch)) another network: the smoke test passes a two-layer stand-in, since it checks this
    script's code path, not the U-Net."""
    if spec is None:
        from helpers.model import build_unet

        return build_unet(n_classes, 1, patch)
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)(n_classes, patch)


def measure(mixed: bool, cfg: dict, spec: str | None = None) -> dict:
    import keras

    from helpers.inference import predict_volume
    from helpers.model import set_precision
    from helpers.patches import sliding_windows
    from helpers.training import compile_for_training

    keras.backend.clear_session()
    policy = set_precision(mixed)
    p, b, c = cfg["patch"], cfg["batch"], cfg["classes"]
    model = compile_for_training(network(spec, c, p))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, p, p, p, 1), dtype=np.float32)
    y = np.eye(c, dtype=np.float32)[rng.integers(0, c, (b, p, p, p))]

    def train() -> None:
        model.train_on_batch(x, y)

    def infer() -> None:
        model.predict_on_batch(x)

    _timed(train, cfg["warmup"])
    train_s = _timed(train, cfg["steps"])
    _timed(infer, cfg["warmup"])
    infer_s = _timed(infer, cfg["steps"])

    n = cfg["volume"]
    volume = rng.standard_normal((n, n, n), dtype=np.float32)
    batches = -(-len(sliding_windows(volume.shape, p, 0.5)) // b)
    model_only = _timed(infer, batches)
    start = time.perf_counter()
    predict_volume(model, volume, p, 0.5, b, output="labels", progress=False)
    whole = time.perf_counter() - start
    return {
        "policy": policy,
        "train": cfg["steps"] * b / train_s,
        "infer": cfg["steps"] * b / infer_s,
        "batches": batches,
        "model_only": model_only,
        "predict_volume": whole,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, runs on a CPU in about a minute")
    parser.add_argument("--model", help="'module:factory' for another network than the U-Net (tests)")
    args = parser.parse_args()
    cfg = SMOKE if args.smoke else FULL

    import keras

    from helpers.model import gpu_count

    gpus = gpu_count()
    device = "CPU"
    if keras.config.backend() == "torch" and gpus:
        import torch

        device = torch.cuda.get_device_name(0)
    elif gpus:
        device = f"{gpus} GPU(s)"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device}")
    print(f"Keras {keras.__version__} ({keras.config.backend()}), NumPy {np.__version__}")
    p, b, c, n = cfg["patch"], cfg["batch"], cfg["classes"], cfg["volume"]
    net = args.model or "ResNet-18 U-Net"
    print(f"patch {p}^3, batch {b}, {c} classes, {net}; predict_volume on {n}^3, overlap 0.5\n")

    rows = [measure(False, cfg, args.model)]
    if gpus:
        rows.append(measure(True, cfg, args.model))
    head = (
        f"{'precision':>14s} | {'train patch/s':>13s} {'infer patch/s':>13s} | "
        f"{'batches':>7s} {'model s':>8s} {'predict_volume s':>16s} {'ratio':>6s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['policy']:>14s} | {r['train']:13.1f} {r['infer']:13.1f} | {r['batches']:7d} "
            f"{r['model_only']:8.2f} {r['predict_volume']:16.2f} {r['predict_volume'] / r['model_only']:6.2f}"
        )
    if not gpus:
        print("mixed_float16 | n/a: no GPU visible (TensorFlow's CPU build has no float16 MaxPool3D)")
    print("\nratio: predict_volume time / model-only time for the same batches (target <= 1.2 on a GPU)")
    print("target: >= 100 training patches/s with mixed precision on an H100/H200")


if __name__ == "__main__":
    main()
