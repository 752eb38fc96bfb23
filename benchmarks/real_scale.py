"""The data path at real sizes: a Spleen-sized dataset, and one 512 x 512 x 400 CT of 13 classes.

Run: ``.venv/bin/python benchmarks/real_scale.py [--part A|B|all] [--workdir DIR]``
(part A about 10 minutes on 2 cores, part B about 5; the data, about 3 GB of NIfTI, is
generated once into ``--workdir``).

The model is a stand-in that costs nothing (one 1 x 1 x 1 convolution), so the figures
measure the course's pipeline (loading, resampling, preprocessing, sampling, stitching,
inversion, scoring), not the U-Net. Every step runs in its own process; its peak memory
is the largest sum of the resident set sizes of that process and its children, polled
every 50 ms.

- **A: a Spleen-sized dataset.** ``--cases`` (41) CTs of 512 x 512 x 31-168 int16,
  0.6-0.98 mm in-plane and 1.5-8 mm between slices, each with an organ blob, as the
  Decathlon's Task09_Spleen. Steps: ``open_dataset`` on the whole folder (the first
  time: it preprocesses), then, in fresh processes, ``open_dataset`` and one epoch of the
  cpu profile's training and validation sampling, on 5 cases and on all of them.
- **B: one CT of 512 x 512 x 400** (0.8 mm in-plane, 2 mm slices) with 12 organs and
  background, and a model trained on a 1.5 mm grid: ``python -m helpers.predict`` with
  and without ``--probabilities``, then the per-case scores (IoU, Dice and HD95 of every
  class) of a label map against a shifted copy of it.

Targets on a 2-core, 24 GB machine (issue 20): preprocessing <= 2 GB whatever the number
of cases; sampling at 41 cases within 10 % of 5 cases; predict <= 2.5 GB (labels) and
<= 5 GB (probabilities); scoring <= 1.5 GB and <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import helpers  # noqa: E402,F401  (before anything imports TensorFlow)

NATIVE_B = (400, 512, 512)
SPACING_B = (2.0, 0.8, 0.8)
WORKING_SPACING_B = (1.5, 1.5, 1.5)


def _nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Save (Z, Y, X) ``array`` as NIfTI with ``spacing`` (Z, Y, X mm), RAS, axes as the course reads them."""
    import nibabel as nib

    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine), str(path))


def _ct(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An int16 CT-like scan (air, a body ellipse of soft tissue, noise) and an organ blob inside it."""
    z, y, x = shape
    yy, xx = np.ogrid[:y, :x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.36 * x)) ** 2 <= 1
    image = np.where(body, np.int16(40), np.int16(-1000))[None].repeat(z, 0)
    image += rng.normal(0, 20, shape).astype(np.int16)
    centre = np.array([z * rng.uniform(0.3, 0.7), y * 0.45, x * 0.3])
    radii = np.array([max(z * 0.2, 3), y * 0.08, x * 0.06])
    zz, yy3, xx3 = np.ogrid[:z, :y, :x]
    inside = ((zz - centre[0]) / radii[0]) ** 2 + ((yy3 - centre[1]) / radii[1]) ** 2
    labels = (inside + ((xx3 - centre[2]) / radii[2]) ** 2 <= 1).astype(np.uint8)
    image[labels > 0] += 60
    return image, labels


def make_spleen_like(folder: Path, cases: int, small: int, seed: int = 0) -> tuple[Path, Path]:
    """``cases`` Spleen-sized CTs in ``folder/all``, and links to the first ``small`` in ``folder/small``."""
    full, few = folder / "all", folder / "small"
    spec = {"name": "SpleenLike", "modality": {"0": "CT"}, "labels": {"background": 0, "spleen": 1}}
    if not (full / "dataset.json").exists():
        rng = np.random.default_rng(seed)
        shutil.rmtree(full, ignore_errors=True)
        for sub in ("imagesTr", "labelsTr"):
            (full / sub).mkdir(parents=True)
        for i in range(cases):
            shape = (int(rng.integers(31, 169)), 512, 512)
            spacing = (float(rng.uniform(1.5, 8.0)), *[float(rng.uniform(0.6, 0.98))] * 2)
            image, labels = _ct(shape, rng)
            _nifti(full / "imagesTr" / f"spleen_{i:03d}.nii.gz", image, spacing)
            _nifti(full / "labelsTr" / f"spleen_{i:03d}.nii.gz", labels, spacing)
            print(f"  case {i + 1}/{cases}: {shape}, spacing {np.round(spacing, 2)}", flush=True)
        (full / "dataset.json").write_text(json.dumps(spec))
    if not (few / "dataset.json").exists():
        shutil.rmtree(few, ignore_errors=True)
        for sub in ("imagesTr", "labelsTr"):
            (few / sub).mkdir(parents=True)
            for f in sorted((full / sub).iterdir())[:small]:
                (few / sub / f.name).symlink_to(f)
        (few / "dataset.json").write_text(json.dumps(spec))
    return full, few


def make_ct_case(folder: Path, n_classes: int = 13) -> tuple[Path, Path]:
    """One 512 x 512 x 400 CT with ``n_classes - 1`` organs, and a stand-in model trained at 1.5 mm."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from label_inversion import organs

    scan, run = folder / "ct" / "ct_0000.nii.gz", folder / "run"
    if not scan.exists():
        scan.parent.mkdir(parents=True, exist_ok=True)
        labels = organs(NATIVE_B, n_classes)
        image = np.where(labels > 0, labels.astype(np.int16) * 10, np.int16(-800))
        image += np.random.default_rng(1).normal(0, 20, NATIVE_B).astype(np.int16)
        _nifti(folder / "ct_truth.nii.gz", labels, SPACING_B)
        _nifti(scan, image, SPACING_B)
    if not (run / "model.json").exists():
        import keras

        run.mkdir(parents=True, exist_ok=True)
        inputs = keras.Input((64, 64, 64, 1))
        outputs = keras.layers.Conv3D(n_classes, 1, activation="softmax", dtype="float32")(inputs)
        keras.Model(inputs, outputs).save(run / "best.keras")
        info = {
            "dataset": "stand-in",
            "class_names": [f"class {c}" for c in range(n_classes)],
            "channel_names": ["CT"],
            "normalisation": {
                "scheme": "ct-clip-zscore",
                "clip": [-1000.0, 200.0],
                "mean": 0.0,
                "std": 100.0,
            },
            "target_spacing": list(WORKING_SPACING_B),
            "patch_size": [64, 64, 64],
        }
        (run / "model.json").write_text(json.dumps(info))
    return scan, run


# ----------------------------------------------------------------------------- the measured steps


def step_open(folder: str, cache: str) -> dict:
    from helpers.datasets import open_dataset

    kwargs = {"cache": cache} if "cache" in open_dataset.__code__.co_varnames else {}
    ds = open_dataset(folder, **kwargs)
    return {"cases": len(ds.cases), "working shapes": sorted({c.shape for c in ds.cases})[:1]}


def step_sample(folder: str, cache: str) -> dict:
    from helpers.config import get_params
    from helpers.datasets import open_dataset
    from helpers.experiment import make_samplers, patch_shape

    kwargs = {"cache": cache} if "cache" in open_dataset.__code__.co_varnames else {}
    ds = open_dataset(folder, **kwargs)
    params = get_params("cpu", folder)
    patch = patch_shape(ds, params)
    train, val = make_samplers(ds, params, patch)
    start = time.perf_counter()
    for sampler in (train, val):
        for i in range(len(sampler)):
            sampler[i]
    return {"cases": len(ds.cases), "patch": patch, "batches": len(train) + len(val),
            "sampling s": round(time.perf_counter() - start, 1)}  # fmt: skip


def step_score(truth: str, shift: int) -> dict:
    from helpers.io import load_volume
    from helpers.metrics import case_scores

    vol = load_volume(truth)
    labels = vol.array
    guess = np.roll(labels, shift, axis=(0, 1, 2))
    names = tuple(f"class {c}" for c in range(int(labels.max()) + 1))
    start = time.perf_counter()
    scores = case_scores(labels, guess, names, vol.spacing)
    return {"scoring s": round(time.perf_counter() - start, 1), "mean IoU": round(scores["mean_iou"], 3)}


STEPS = {"open": step_open, "sample": step_sample, "score": step_score}


# ----------------------------------------------------------------------------- measuring


def measure(argv: list[str]) -> tuple[float, float, str]:
    """Run ``argv`` in a new process; (wall s, peak RSS of it and its children in GB, its last line)."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak, done = 0, threading.Event()

    def poll() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{argv} failed with status {proc.returncode}:\n{out}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return time.perf_counter() - start, peak / 1e9, last


RESULTS: dict[str, tuple[float, float]] = {}


def _row(name: str, wall: float, gb: float, note: str) -> None:
    RESULTS.setdefault(name.split(" (")[0].split(", first")[0], (wall, gb))  # the first of a name counts
    print(f"| {name} | {wall:.1f} | {gb:.2f} | {note} |", flush=True)


def _targets(cases: int, small: int) -> None:
    """Each measured figure against issue 20's target, and the sampling ratio of ``cases`` to ``small``."""
    get = RESULTS.get
    first, few, many = (
        get(f"A: open_dataset, {cases} cases"),
        get(f"A: sampling, {small} cases"),
        get(f"A: sampling, {cases} cases"),
    )
    labels, probs, score = (
        get("B: predict, labels"),
        get("B: predict, --probabilities"),
        get("B: scores of 13 classes"),
    )
    rows = []
    if first:
        rows.append(("preprocessing peak RSS", f"{first[1]:.2f} GB", "<= 2 GB", first[1] <= 2))
    if few and many:
        ratio = many[1] / few[1]
        rows.append((f"sampling RSS, {cases} / {small} cases", f"{ratio:.3f}", "<= 1.10", ratio <= 1.10))
    if labels:
        rows.append(("predict (labels) peak RSS", f"{labels[1]:.2f} GB", "<= 2.5 GB", labels[1] <= 2.5))
    if probs:
        rows.append(("predict --probabilities peak RSS", f"{probs[1]:.2f} GB", "<= 5 GB", probs[1] <= 5))
    if score:
        rows.append(("scoring peak RSS", f"{score[1]:.2f} GB", "<= 1.5 GB", score[1] <= 1.5))
        rows.append(("scoring time", f"{score[0]:.1f} s", "<= 60 s", score[0] <= 60))
    print("\n| target | measured | wanted | met |\n|---|---|---|---|")
    for name, got, wanted, met in rows:
        print(f"| {name} | {got} | {wanted} | {'yes' if met else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["A", "B", "all"], default="all")
    parser.add_argument("--workdir", default="/tmp/real_scale", help="where the data is generated")
    parser.add_argument("--cases", type=int, default=41)
    parser.add_argument("--small", type=int, default=5)
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        fn = STEPS[args.step]
        params = [int(a) if a.isdigit() else a for a in args.args]
        print(json.dumps(fn(*params), default=str))
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, {psutil_total_gb():.0f} GB; NumPy {np.__version__}")
    me = [sys.executable, str(Path(__file__).resolve())]
    print("\n| step | wall s | peak RSS GB | result |\n|---|---|---|---|")
    if args.part in ("A", "all"):
        full, few = make_spleen_like(work / "spleen", args.cases, args.small)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        for when in ("first time: preprocesses", "again"):
            _row(
                f"A: open_dataset, {args.cases} cases, {when}",
                *measure([*me, "--step", "open", str(full), str(cache)]),
            )
        measure([*me, "--step", "open", str(few), str(cache)])  # preprocessed beforehand, not measured
        for n, folder in ((args.small, few), (args.cases, full)):
            step = [*me, "--step", "sample", str(folder), str(cache)]
            _row(f"A: sampling, {n} cases (open, then one cpu-profile epoch)", *measure(step))
    if args.part in ("B", "all"):
        scan, run = make_ct_case(work / "ct")
        out = work / "ct" / "out"
        predict = [sys.executable, "-m", "helpers.predict", str(run), str(scan), "-o", str(out)]
        _row("B: predict, labels", *measure(predict))
        _row("B: predict, --probabilities", *measure([*predict, "--probabilities"]))
        truth = str(work / "ct" / "ct_truth.nii.gz")
        _row("B: scores of 13 classes (IoU, Dice, HD95)", *measure([*me, "--step", "score", truth, "3"]))
    _targets(args.cases, args.small)


def psutil_total_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 1e9


if __name__ == "__main__":
    main()
