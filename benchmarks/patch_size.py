"""32^3 against 64^3 patches for the cpu profile, at the same training compute: test mean IoU.

Run: ``.venv/bin/python benchmarks/patch_size.py`` (the embedded sandstone at the cpu profile's
size, 6 epochs of 25 steps for the first two arms: about 30 minutes on 2 cores). ``--epochs 1
--steps 2`` is a smoke run of a few minutes.

Every arm trains the same U-Net on the same split of the sandstone's five cores:

- **32**: 32^3 patches, 8 a batch (the cpu profile; a 1^3 bottleneck after five halvings);
- **64**: 64^3 patches, 1 a batch (the mission's patch; a 2^3 bottleneck, 8 times the context),
  for the same epochs and steps: the same voxels in each step;
- **64-time**: the same, trained epoch after epoch until its wall clock is closest to the 32
  arm's (the same wall-clock budget).

The wall clock of each training is measured, not assumed equal. Each model is scored once on
the test cores (mean IoU over the foreground classes, whole cases, overlap 0.5, Gaussian).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import helpers  # noqa: F401  (before Keras)

# isort: split

import keras

from helpers.config import get_params
from helpers.evaluation import score_test
from helpers.experiment import load_trained, prepare, train_from_params

ARMS = ("32", "64", "64-time")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class WallClock(keras.callbacks.Callback):
    """Stops training at the end of the epoch that brings it closest to ``budget_s`` seconds."""

    def __init__(self, budget_s: float) -> None:
        super().__init__()
        self.budget_s = budget_s

    def on_train_begin(self, logs=None):
        self.start, self.epochs = time.perf_counter(), 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        elapsed = time.perf_counter() - self.start
        if elapsed + 0.5 * elapsed / self.epochs >= self.budget_s:
            self.model.stop_training = True


def arm(patch: int, batch: int, epochs: int, args, budget_s: float | None = None) -> dict:
    overrides = {
        "epochs": epochs,
        "steps_per_epoch": args.steps,
        "patch_size": patch,
        "batch_size": batch,
    }
    params = get_params(
        args.profile,
        "sandstone",
        output_dir=str(Path(args.workdir) / f"{patch}-{batch}-{epochs}"),
        **overrides,
    )
    shutil.rmtree(params["run_dir"], ignore_errors=True)
    ds = prepare(params)
    start = time.perf_counter()
    callbacks = () if budget_s is None else (WallClock(budget_s),)
    history = train_from_params(params, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    model, _ = load_trained(params["run_dir"], ds)
    result = score_test(model, ds, params, "test", baseline=False, progress=False)
    return {
        "patch": patch,
        "batch": batch,
        "epochs": len(history["epoch"]),
        "train_s": seconds,
        "best_val_mean_iou": max(history["val_mean_iou"]),
        "iou": result["unet"]["iou"][1:],  # the foreground classes
        "mean_iou": float(result["unet"]["mean_iou"]),
        "cases": sorted(result["unet"]["per_case"]),
        "classes": ds.class_names[1:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--workdir", default="outputs/benchmarks/patch_size")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=list(ARMS),
        help="32: the cpu profile; 64: the same epochs, steps and voxels per step; 64-time: as long as "
        "the 32 arm trained (--budget-s when the 32 arm is not run)",
    )
    parser.add_argument("--budget-s", type=float, default=None)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; sandstone, profile {args.profile}, {args.epochs} epochs x {args.steps} steps")
    results, budget = [], args.budget_s
    if "32" in args.arms:
        results.append(arm(32, 8, args.epochs, args))
        budget = results[-1]["train_s"]
    if "64" in args.arms:
        results.append(arm(64, 1, args.epochs, args))
    if "64-time" in args.arms:
        if budget is None:
            parser.error("--arms 64-time without 32 needs --budget-s")
        results.append(arm(64, 1, 4 * args.epochs, args, budget_s=budget))
    for r in results:
        print(json.dumps(r), flush=True)
    print(f"\ntest cases: {', '.join(results[0]['cases'])}")
    classes = " / ".join(results[0]["classes"])
    print(
        f"| patch x batch | epochs | training s | best val. mean IoU | test IoU {classes} | test mean IoU |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        per = " / ".join("-" if v is None else f"{v:.3f}" for v in r["iou"])
        arm_name = f"{r['patch']}³ x {r['batch']}"
        print(
            f"| {arm_name} | {r['epochs']} | {r['train_s']:.0f} | {r['best_val_mean_iou']:.3f} |"
            f" {per} | {r['mean_iou']:.3f} |"
        )
    assert all(r["cases"] == results[0]["cases"] for r in results)  # the same test cases
    for r in results[1:]:
        print(
            f"{r['patch']}³ x {r['batch']}, {r['epochs']} epochs / {results[0]['patch']}³: test mean IoU "
            f"{r['mean_iou'] - results[0]['mean_iou']:+.3f}, "
            f"training time {r['train_s'] / results[0]['train_s']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
