"""A tiny training run in its own process, for the fault-injection and lock tests.

``python tests/fault_worker.py EPOCHS RUN_DIR [RUN_DIR ...]`` trains a two-layer Conv3D
model on a random phantom with :func:`helpers.training.train` in each run folder in turn
(one process resumes many killed runs: TensorFlow's import is most of a start). It prints
``READY`` before training and ``STARTED i k`` at the start of epoch k in the i-th folder,
flushed, so a test can kill it at a chosen moment and see which epochs a resume trains.
The weights and optimizer state are saved every ``STATE_EVERY`` epochs, so a kill loses
at most that many.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers.sampling import PatchSampler
from helpers.training import train  # noqa: E402

STATE_EVERY = 2


class Report(keras.callbacks.Callback):
    def __init__(self, run: int) -> None:
        super().__init__()
        self.run = run

    def on_epoch_begin(self, epoch, logs=None):
        print(f"STARTED {self.run} {epoch}", flush=True)


def tiny_model(n_classes: int = 3) -> keras.Model:
    inputs = keras.Input((16, 16, 16, 1))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv3D(n_classes, 1, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def main(epochs: int, run_dirs: list[str]) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (24, 24, 24)).astype(np.uint8)
    image = labels + rng.normal(0, 0.5, labels.shape).astype(np.float32)
    data = PatchSampler(image, labels, 16, 2, 2, n_classes=3, seed=0)
    val = PatchSampler(image, labels, 16, 2, 1, n_classes=3, augment=False, resample_each_epoch=False)
    print("READY", flush=True)
    for i, run_dir in enumerate(run_dirs):
        report = [Report(i)]
        train(tiny_model(), data, val, epochs, run_dir, callbacks=report, verbose=0, state_every=STATE_EVERY)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
