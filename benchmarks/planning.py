"""The plan against the native grid: test Dice of the same training on a real-sized MR dataset.

Run: ``.venv/bin/python benchmarks/planning.py`` (the cpu profile on 8 generated two-channel
cases of 155 x 240 x 240 at 1 mm: about 35 minutes on 2 cores). ``--shape 38 60 60 --spacing 4
--epochs 1 --steps 2`` is a smoke run of a minute.

Both arms train the cpu profile's U-Net (32^3 patches, batch 8, the same epochs and steps, so
the same number of patches of the same size: the same compute) on the same split:

- **plan**: the grid :func:`helpers.planning.make_plan` chooses (coarser when a patch sees too
  little of a case);
- **native**: ``target_spacing`` set to the scans' own 1 mm, as the course did before the plan.

Each model is scored once on the test cases at their native resolution (mean Dice over the
foreground classes, as nnU-Net reports it). The table gives both, their ratio and each arm's
training time, measured in this run.
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

from helpers.config import get_params
from helpers.evaluation import score_test
from helpers.experiment import load_trained, prepare, train_from_params
from helpers.planning import describe_plan
from helpers.tumours import make_tumour_dataset


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def arm(folder: Path, out: Path, spacing, args) -> dict:
    overrides = {"epochs": args.epochs, "steps_per_epoch": args.steps, "target_spacing": spacing}
    params = get_params("cpu", str(folder), output_dir=str(out), **overrides)
    shutil.rmtree(params["run_dir"], ignore_errors=True)
    ds = prepare(params)
    print(describe_plan(ds.plan), flush=True)
    start = time.perf_counter()
    train_from_params(params, verbose=0)
    seconds = time.perf_counter() - start
    model, _ = load_trained(params["run_dir"], ds)
    result = score_test(model, ds, params, "test", baseline=False, progress=False)
    dice = [float("nan") if d is None else d for d in result["unet"]["dice"][1:]]  # the foreground classes
    return {
        "spacing": ds.plan["target_spacing"],
        "patch_mm": ds.plan["patch_mm"],
        "train_s": seconds,
        "dice": dice,
        "mean_dice": float(result["unet"]["mean_dice"]),
        "cases": sorted(result["unet"]["per_case"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(155, 240, 240))
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the cpu profile's")
    parser.add_argument("--steps", type=int, default=None, help="default: the cpu profile's")
    parser.add_argument("--workdir", default="outputs/benchmarks/planning")
    parser.add_argument("--arms", nargs="+", choices=("plan", "native"), default=["plan", "native"])
    args = parser.parse_args()

    work = Path(args.workdir)
    folder = work / "Dataset501_Tumour"
    if not (folder / "dataset.json").exists():
        make_tumour_dataset(folder, cases=args.cases, unlabelled=0, shape=args.shape, spacing=args.spacing)
    print(f"CPU: {cpu_name()}; {args.cases} cases of {tuple(args.shape)} at {args.spacing} mm, 2 channels")
    results = {}
    for name, spacing in (("plan", None), ("native", (args.spacing,) * 3)):
        if name in args.arms:
            results[name] = arm(folder, work / name, spacing, args)
            print(name, json.dumps(results[name]), flush=True)
    print(f"\ntest cases: {', '.join(next(iter(results.values()))['cases'])}")
    print("| arm | grid (mm) | one patch sees (mm) | training s | test Dice per class | mean Dice |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        per = " / ".join(f"{d:.3f}" for d in r["dice"])
        grid = " x ".join(f"{s:g}" for s in r["spacing"])
        seen = " x ".join(f"{m:g}" for m in r["patch_mm"])
        print(f"| {name} | {grid} | {seen} | {r['train_s']:.0f} | {per} | {r['mean_dice']:.3f} |")
    if len(results) == 2:
        plan, native = results["plan"], results["native"]
        assert plan["cases"] == native["cases"]  # the same test cases
        print(
            f"\nplan / native: mean Dice {plan['mean_dice'] / max(native['mean_dice'], 1e-9):.2f}x, "
            f"training time {plan['train_s'] / native['train_s']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
