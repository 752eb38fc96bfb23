"""PatchSampler throughput against the model's training throughput on this CPU.

Run: ``.venv/bin/python benchmarks/sampler.py`` (about 2 minutes on 2 cores).

The sampler must be at least 10x faster than a training step consumes patches, so it
cannot starve the model, and a GPU would need ~10x more before it mattered.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from helpers.datasets import make_sandstone  # noqa: E402
from helpers.model import SegmentationLoss, build_unet  # noqa: E402
from helpers.preprocessing import normalize  # noqa: E402
from helpers.training import PatchSampler  # noqa: E402


def sampler_rate(
    image: np.ndarray, labels: np.ndarray, patch: int, batch: int, seconds: float = 5.0
) -> float:
    sampler = PatchSampler(image, labels, patch, batch, 10_000, n_classes=4, seed=0)
    sampler[0]
    n, start, i = 0, time.perf_counter(), 1
    while time.perf_counter() - start < seconds:
        sampler[i]
        n += batch
        i += 1
    return n / (time.perf_counter() - start)


def model_rate(patch: int, batch: int, steps: int) -> float:
    model = build_unet(4, patch_size=patch)
    model.compile(optimizer="adam", loss=SegmentationLoss("dice+ce"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, patch, patch, patch, 1)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (batch, patch, patch, patch))]
    model.train_on_batch(x, y)  # compile and warm up
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    import keras

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Keras {keras.__version__} "
        f"({keras.config.backend()}), float32"
    )
    image, labels = make_sandstone((256, 256, 256), seed=0)
    image = normalize(image)
    print(
        f"{'patch':>6s} {'batch':>5s} | {'sampler patches/s':>17s} | "
        f"{'training patches/s':>18s} | {'ratio':>6s}"
    )
    for patch, batch, steps in [(32, 8, 6), (64, 8, 3)]:
        s = sampler_rate(image, labels, patch, batch)
        m = model_rate(patch, batch, steps)
        print(f"{patch:>5d}³ {batch:>5d} | {s:17.1f} | {m:18.2f} | {s / m:6.0f}x")


if __name__ == "__main__":
    main()
