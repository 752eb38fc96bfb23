"""Embedded datasets: phantom generation time and the multi-Otsu baseline on held-out slabs.

Run: ``.venv/bin/python benchmarks/datasets.py`` (about a minute on 2 cores).

The baseline is what the U-Net must beat: multi-Otsu thresholds
(``skimage.filters.threshold_multiotsu``) on the intensities of each dataset's
held-out slab, classes in intensity order, scored per class with IoU.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.config import PROFILES  # noqa: E402
from helpers.datasets import SPLIT_AXIS, load_dataset, make_sandstone, spatial_split  # noqa: E402
from helpers.experiment import evaluate, multiotsu_baseline  # noqa: E402


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    start = time.perf_counter()
    make_sandstone((256, 256, 256), seed=0)
    print(f"make_sandstone((256, 256, 256)): {time.perf_counter() - start:.1f} s\n")
    for profile in ("full", "cpu"):
        prof = PROFILES[profile]
        for name in ("sandstone", "brain"):
            ds = load_dataset(name, prof["sandstone_shape"], prof["brain_zoom"])
            _, held = spatial_split(ds.image.shape, prof["val_fraction"], SPLIT_AXIS[name])
            truth = ds.labels[held]
            score = evaluate(truth, multiotsu_baseline(ds.image[held], len(ds.class_names)), ds.class_names)
            per_class = ", ".join(f"{c} {v:.3f}" for c, v in zip(ds.class_names, score["iou"], strict=True))
            print(
                f"[{profile} profile] {name} {ds.image.shape}, held-out {truth.shape}: "
                f"mean IoU {score['mean_iou']:.3f} ({per_class})"
            )


if __name__ == "__main__":
    main()
