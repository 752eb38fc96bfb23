"""PatchSampler throughput against the model's training throughput on this CPU.

Run: ``.venv/bin/python benchmarks/sampler.py`` (about 2 minutes on 2 cores).

The sampler must be at least 10x faster than a training step consumes patches, so it
cannot starve the model, and a GPU would need ~10x more before it mattered. It is
measured on one 256³ volume and on the same voxels as eight 128³ cases, with the
class-balanced foreground oversampling of :class:`helpers.sampling.PatchSampler`.
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


def sampler_rate(image, labels, patch: int, batch: int, seconds: float = 5.0) -> float:
    """Patches per second served by the sampler (one volume, or lists of them for several cases)."""
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
    cases = [make_sandstone((128, 128, 128), seed=k) for k in range(8)]  # the same voxels in 8 cases
    images, label_maps = [normalize(c[0]) for c in cases], [c[1] for c in cases]
    print(
        f"{'patch':>6s} {'batch':>5s} | {'sampler, 1 case':>15s} | {'sampler, 8 cases':>16s} | "
        f"{'training':>8s} | {'ratio (8 cases)':>15s}   (patches/s)"
    )
    for patch, batch, steps in [(32, 8, 6), (64, 8, 3)]:
        one = sampler_rate(image, labels, patch, batch)
        many = sampler_rate(images, label_maps, patch, batch)
        m = model_rate(patch, batch, steps)
        print(f"{patch:>5d}³ {batch:>5d} | {one:15.1f} | {many:16.1f} | {m:8.2f} | {many / m:14.0f}x")


if __name__ == "__main__":
    main()
