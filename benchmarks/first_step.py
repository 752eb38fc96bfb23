"""The first training step of the U-Net: Adam built before it, or inside it (Keras' default).

Run: ``.venv/bin/python benchmarks/first_step.py`` (about 2 minutes on 2 cores).

Without a distribution strategy, Keras builds the optimizer inside the first traced
training step. Creating variables there makes TensorFlow trace the step twice. The
course's :class:`helpers.training.RunCheckpoint` builds Adam in ``on_train_begin``, so
the step is traced once. Each way is measured in a fresh process (model built, compiled
with Dice + CE and the IoU metrics, then timed: the first step, then the mean of three
more); the ratio is against the prebuilt run of the same script.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import helpers
import keras
import numpy as np
from helpers.model import SegmentationLoss, build_unet, iou_metrics
model = build_unet(4, patch_size=32)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SegmentationLoss("dice+ce"), metrics=iou_metrics(4))
rng = np.random.default_rng(0)
x = rng.random((2, 32, 32, 32, 1), dtype=np.float32)
y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (2, 32, 32, 32))]
t = time.perf_counter()
if sys.argv[1] == "prebuilt":
    model.optimizer.build(model.trainable_variables)
model.train_on_batch(x, y)
first = time.perf_counter() - t
t = time.perf_counter()
for _ in range(3):
    model.train_on_batch(x, y)
print(json.dumps({"first_step_s": first, "later_step_s": (time.perf_counter() - t) / 3}))
"""


def measure(mode: str) -> dict[str, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; U-Net, batch 2, 32³, Dice + CE, Adam")
    built, lazy = measure("prebuilt"), measure("lazy")
    print("| | Adam built before the step | built inside it (Keras) | inside / before |")
    print("|---|---|---|---|")
    for key in built:
        print(f"| {key} | {built[key]:.2f} s | {lazy[key]:.2f} s | {lazy[key] / built[key]:.2f} × |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
