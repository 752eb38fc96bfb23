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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.config import get_params  # noqa: E402
from helpers.datasets import make_cores_dataset, make_sandstone, open_dataset  # noqa: E402
from helpers.evaluation import multiotsu_baseline  # noqa: E402
from helpers.experiment import prepare  # noqa: E402
from helpers.metrics import evaluate  # noqa: E402


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    start = time.perf_counter()
    make_sandstone((256, 256, 256), seed=0)
    print(f"make_sandstone((256, 256, 256)): {time.perf_counter() - start:.1f} s\n")
    for profile in ("full", "cpu"):
        for name in ("sandstone", "brain"):
            ds = prepare(get_params(profile, name))
            (case, region), = ds.part("test")
            truth = case.labels[region]
            score = evaluate(truth, multiotsu_baseline(case.image[region], ds.n_classes), ds.class_names)
            per_class = ", ".join(f"{c} {v:.3f}" for c, v in zip(ds.class_names, score["iou"], strict=True))
            print(
                f"[{profile} profile] {name} {case.shape}, test slab {truth.shape}: "
                f"mean IoU {score['mean_iou']:.3f} ({per_class})"
            )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_cores_dataset(Path(tmp) / "SandstoneCores")
        made = time.perf_counter() - start
        start = time.perf_counter()
        ds = open_dataset(root)
        opened = time.perf_counter() - start
        print(
            f"\nSandstoneCores: written in {made:.2f} s, opened (aligned, resampled, normalised, split) "
            f"in {opened:.2f} s; {len(ds.cases)} cases, target spacing {ds.target_spacing} mm"
        )


if __name__ == "__main__":
    main()
