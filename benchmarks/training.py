"""Where a training epoch goes: the course's ``model.fit`` against the training step alone.

Run: ``.venv/bin/python benchmarks/training.py`` (9 minutes on 2 cores with the
cpu profile: 25 steps of 8 patches of 32³ on the sandstone, 4 validation batches).

One process, one compiled U-Net, three ways to spend an epoch's 25 steps:

1. **course**: :func:`helpers.training.training_run` around ``model.fit`` on the
   samplers, as :func:`helpers.training.train` runs it (validation, the per-epoch
   commit). The first epoch also traces the steps; the mean is over the epochs after it.
   Callbacks time the batches, the validation and the commit inside each epoch.
2. **prefetched**: ``train_on_batch`` on the same number of batches, drawn beforehand.
3. **step**: ``train_on_batch`` on one batch, again and again.

The sampler's cost is timed on its own (``sampler[i]`` for an epoch's batches). The
difference between the course's batches and the prefetched steps, less sampling, is
the data adapter's (Keras turning the sampler into a ``tf.data`` pipeline). Ratios are
against the step-alone epoch of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import helpers  # noqa: F401  (before Keras: TensorFlow's CPU options)


def _timers():
    import keras

    from helpers.training import RunCheckpoint

    class EpochTimer(keras.callbacks.Callback):
        """Seconds per epoch spent in batches, validation and the rest."""

        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[dict[str, float]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"batches": 0.0, "validation": 0.0, "commit": 0.0})
            self._epoch = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            self._batch = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1]["batches"] += time.perf_counter() - self._batch

        def on_test_begin(self, logs=None):
            self._test = time.perf_counter()

        def on_test_end(self, logs=None):
            if self.epochs:
                self.epochs[-1]["validation"] += time.perf_counter() - self._test

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1]["epoch"] = time.perf_counter() - self._epoch

    class TimedCheckpoint(RunCheckpoint):
        """The course's checkpoint, its ``on_epoch_end`` timed into ``timer``."""

        timer: EpochTimer

        def on_epoch_end(self, epoch, logs=None):
            t = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            self.timer.epochs[-1]["commit"] += time.perf_counter() - t
            self.timer.epochs[-1]["epoch"] = time.perf_counter() - self.timer._epoch

    return EpochTimer, TimedCheckpoint


def course_epochs(
    model, train_data, val_data, epochs: int, run_dir: Path
) -> tuple[list[dict[str, float]], float]:
    """Fit ``epochs`` epochs the course's way: per-epoch seconds by part, and fit's total."""
    from helpers.training import RunCheckpoint, training_run

    EpochTimer, TimedCheckpoint = _timers()
    timer = EpochTimer()
    with training_run(run_dir, epochs) as run:
        for cb in run.callbacks:
            if isinstance(cb, RunCheckpoint):
                cb.__class__, cb.timer = TimedCheckpoint, timer
        callbacks = [timer, *run.callbacks]
        t = time.perf_counter()
        model.fit(train_data, validation_data=val_data, epochs=epochs, callbacks=callbacks, verbose=0)
        total = time.perf_counter() - t
    return timer.epochs, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help="course profile (default: cpu)")
    parser.add_argument("--epochs", type=int, default=3, help="course epochs; the first also traces")
    args = parser.parse_args()

    import numpy as np

    from helpers.config import get_params
    from helpers.experiment import make_samplers, patch_shape, prepare
    from helpers.model import build_unet, set_precision
    from helpers.training import compile_for_training

    params = get_params(args.profile, "sandstone")
    ds = prepare(params)
    patch = patch_shape(ds, params)
    train_data, val_data = make_samplers(ds, params, patch)
    steps, batch = len(train_data), params["batch_size"]
    precision = set_precision("auto")
    model = compile_for_training(build_unet(ds.n_classes, patch_size=patch), params["learning_rate"])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {precision}; profile {args.profile}: "
        f"{steps} steps of {batch} x {patch}, {len(val_data)} validation batches"
    )

    with tempfile.TemporaryDirectory() as tmp:
        parts, course_total = course_epochs(model, train_data, val_data, args.epochs, Path(tmp) / "run")
    steady = parts[1:] or parts
    mean = {k: float(np.mean([p[k] for p in steady])) for k in steady[0]}

    t = time.perf_counter()
    batches = [train_data[i] for i in range(steps)]
    sampling = time.perf_counter() - t
    model.train_on_batch(*batches[0])  # train_on_batch traces its own step once: not timed
    t = time.perf_counter()
    for x, y in batches:
        model.train_on_batch(x, y)
    prefetched = time.perf_counter() - t
    x, y = batches[0]
    t = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    step = time.perf_counter() - t

    adapter = mean["batches"] - prefetched - sampling
    rest = mean["epoch"] - mean["batches"] - mean["validation"] - mean["commit"]
    first = parts[0]["epoch"]
    print(f"first epoch (traces the steps): {first:.2f} s; fit's {args.epochs} epochs: {course_total:.2f} s")
    print(f"mean of the {len(steady)} epoch(s) after it, and the same {steps} steps without fit:")
    print()
    print("| per epoch | seconds | × the step alone |")
    print("|---|---|---|")
    for name, value in [
        ("course: `model.fit` epoch", mean["epoch"]),
        ("— its training batches", mean["batches"]),
        ("— its validation", mean["validation"]),
        ("— its commit (RunCheckpoint)", mean["commit"]),
        ("— other callbacks and bookkeeping", rest),
        ("sampling the batches alone", sampling),
        ("data adapter (batches − prefetched − sampling)", adapter),
        ("`train_on_batch` on prefetched batches", prefetched),
        ("the step alone (one batch, repeated)", step),
    ]:
        print(f"| {name} | {value:.2f} | {value / step:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
