"""How far, and how fast, the course's U-Net learns one batch by heart (04's overfit check).

Run: ``.venv/bin/python benchmarks/overfit.py --profile quick --steps 250`` (about 6 minutes
on 2 cores; ``--profile cpu`` takes batches of 8 and about twice as long a step).

The profile's sandstone is prepared as 04 prepares it, a fresh U-Net is built (seed 0)
and compiled as 04 compiles it, and :func:`helpers.overfit.overfit_one_batch` trains
it on the training batch with the most classes. The table gives the loss of chosen
steps and its ratio to the first step's loss, in the same run; then the same check
with a learning rate a thousand times too small, the fault the check is there to catch.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import helpers  # noqa: F401  (before Keras)

# isort: split
import keras

from helpers.config import get_params
from helpers.experiment import make_samplers, patch_shape, prepare
from helpers.model import SegmentationLoss, build_unet, iou_metrics
from helpers.overfit import batch_with_most_classes, classes_present, overfit_one_batch


def compiled_unet(ds, patch, params, learning_rate: float) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_unet(ds.n_classes, patch_size=patch, in_channels=ds.n_channels)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=SegmentationLoss(params["loss"]),
        metrics=iou_metrics(ds.n_classes, ds.class_names),
    )
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=("quick", "cpu"))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--control-steps", type=int, default=10)
    parser.add_argument("--output-dir", default="outputs/benchmarks/overfit")
    args = parser.parse_args()

    params = get_params(args.profile, "sandstone", output_dir=args.output_dir)
    ds = prepare(params)
    patch = patch_shape(ds, params)
    train_data, _ = make_samplers(ds, params, patch)
    x, y = batch_with_most_classes(train_data)
    rate = params["learning_rate"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; profile {args.profile}: U-Net, batch "
          f"{len(x)} x {patch}, {classes_present(y)} of {ds.n_classes} classes, {params['loss']}, "
          f"Adam {rate:g}")

    model = compiled_unet(ds, patch, params, rate)
    start = time.perf_counter()
    losses = overfit_one_batch(model, x, y, args.steps)
    seconds = time.perf_counter() - start
    marks = sorted({1, 10, 25, 50, 100, 150, 200, 250, args.steps} & set(range(1, args.steps + 1)))
    print("\n| step | loss | / step 1 |\n|---|---|---|")
    for step in marks:
        print(f"| {step} | {losses[step - 1]:.3f} | {losses[step - 1] / losses[0]:.3f} |")
    under = next((k + 1 for k, v in enumerate(losses) if v < 0.1 * losses[0]), None)
    print(f"\nfirst step under a tenth of step 1: {under}; {seconds:.1f} s for {args.steps} steps, "
          "the first one's trace included")

    if args.control_steps:
        control = compiled_unet(ds, patch, params, rate / 1000)
        slow = overfit_one_batch(control, x, y, args.control_steps)
        print(f"control, Adam {rate / 1000:g}: loss {slow[0]:.3f} -> {slow[-1]:.3f} after {len(slow)} steps "
              f"({slow[-1] / slow[0]:.3f} of step 1); at {rate:g}: {losses[0]:.3f} -> "
              f"{losses[len(slow) - 1]:.3f} ({losses[len(slow) - 1] / losses[0]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
