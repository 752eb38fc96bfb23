"""Whole-volume stitching: predict_volume's speed and memory against MONAI, a frozen baseline and patchify.

Run: ``.venv/bin/python benchmarks/stitching.py`` (about 4 minutes on 2 cores; with
``--monai-python`` about 6).

For a float32 volume, 3 classes, 64^3 patches, overlap 0.5, batch 8 and the same stand-in model
on every side (:func:`stand_in`: fixed scores copied into a fresh array, as a real model returns
one, by the same NumPy call on one thread; channel-last for the course, channel-first for MONAI,
as each framework's models return them; each side's time in it is reported), it prints, all
measured in the same run:

(a) seconds of ``predict_volume`` (median of ``--repeats`` fresh processes, with the range),
    and its kernel (system) CPU time and page faults, the costs of first touching memory;
(b) its speed-up over the frozen baseline, ``frozen_predict_volume.py``: a short
    reimplementation of the channel-last, one-thread stitching that shipped at a4f303f
    (the same outputs, bit for bit, and the same operations), median over median;
(c) with ``--monai-python PY`` (an interpreter with torch and monai, not course
    dependencies), MONAI's ``sliding_window_inference`` on the same volume and settings
    (Gaussian, sigma = patch/8, a CPU tensor), alternating with the other sides run by run;
    each side's imports are done before its clock starts. Each ratio to ours is printed
    twice: of the times, and of the times less each side's time inside the stand-in model;
(d) peak resident memory above the input, as a multiple of the input's bytes;
(e) its time over the contiguous floor: the same number of patch-sized weighted adds, one
    class plane at a time into a channel-first (C, Z, Y, X) accumulator, in plain NumPy on
    one thread with a precomputed prediction; beside it the same adds channel-last, as
    ``helpers.stitching`` makes them (the weights repeated per class, a few Z slices of every
    window of a batch in turn, into (Z, Y, X, C) sums), also on one thread;
(f) the patchify -> model -> unpatchify route (no blending: unpatchify keeps only the
    non-overlapping patches).

Each measurement runs in a fresh process, started once the machine is idle (under
``--idle-cores`` busy over half a second, waiting at most ``--idle-wait`` seconds; the
report counts those that could not wait). The peak is the kernel's high-water mark (VmHWM,
reset through /proc/self/clear_refs after the input and the stand-in's scores are made).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATCH, OVERLAP, CLASSES, BATCH = 64, 0.5, 3, 8


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def make_volume(n: int) -> np.ndarray:
    """An n^3 float32 volume filled slice by slice (no float64 temporary)."""
    rng = np.random.default_rng(0)
    vol = np.empty((n, n, n), dtype=np.float32)
    for z in range(n):
        vol[z] = rng.random((n, n), dtype=np.float32)
    return vol


MODEL_SECONDS = [0.0]  # time spent inside the stand-in model, this process


@functools.cache
def scores(channel_first: bool = False) -> np.ndarray:
    """What the stand-in model returns: a batch of fixed class scores in [0, 1), float32,
    (BATCH, p, p, p, CLASSES), or (BATCH, CLASSES, p, p, p) with the same values. Made once,
    before a run's clock starts and its peak memory is reset (:func:`worker`)."""
    last = np.random.default_rng(0).random((BATCH, PATCH, PATCH, PATCH, CLASSES), np.float32)
    return np.ascontiguousarray(np.moveaxis(last, -1, 1)) if channel_first else last


def stand_in(fixed: np.ndarray, n: int) -> np.ndarray:
    """The stand-in model of every side: ``n`` batch items of ``fixed`` copied into a fresh array.

    The same bytes cost the same one-thread NumPy copy in either layout (3.5-3.9 ms a batch of 8
    on the AMD EPYC measured), so the sides differ only in what they do around the model. The
    input repeated to each class, as this script's model was until 2026-12-06, is not: NumPy
    interleaves it into channel-last classes in 6.7 ms, torch copies channel-first blocks on two
    cores in 3.5 ms, and that difference, not the stitching, decided which side was faster.
    """
    start = time.perf_counter()
    out = fixed[:n].copy()
    MODEL_SECONDS[0] += time.perf_counter() - start
    return out


def channel_last_model() -> Callable[[np.ndarray], np.ndarray]:
    """The stand-in as the course calls a model: a (B, p, p, p, 1) batch in, (B, p, p, p, C) out."""
    fixed = scores()
    return lambda batch: stand_in(fixed, len(batch))


def run_predict(vol: np.ndarray, output: str) -> None:
    from helpers.inference import predict_volume

    predict_volume(channel_last_model(), vol, PATCH, OVERLAP, BATCH, "gaussian", output, progress=False)


def run_frozen(vol: np.ndarray, output: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from frozen_predict_volume import predict_volume as frozen

    frozen(channel_last_model(), vol, PATCH, OVERLAP, BATCH, "gaussian", output, progress=False)


def run_floor(vol: np.ndarray) -> None:
    from helpers.patches import gaussian_weights, sliding_windows

    w = gaussian_weights(PATCH)
    pred = scores()[0]
    tmp = np.empty_like(w)
    acc = np.zeros((CLASSES, *vol.shape), np.float32)
    wsum = np.zeros(vol.shape, np.float32)
    for win in sliding_windows(vol.shape, PATCH, OVERLAP):
        for c in range(CLASSES):
            np.multiply(pred[..., c], w, out=tmp)
            acc[c][win] += tmp
        wsum[win] += w


def chunk_slices() -> int:
    """Z slices that helpers.stitching weights at once for these patches and classes."""
    from helpers.stitching import CHUNK_BYTES

    return max(1, CHUNK_BYTES // (4 * CLASSES * PATCH * PATCH))


def run_floor_channel_last(vol: np.ndarray) -> None:
    from helpers.patches import gaussian_weights, sliding_windows

    w = gaussian_weights(PATCH)
    w3 = np.repeat(w[..., None], CLASSES, axis=-1)
    pred = scores()[0]
    slices = chunk_slices()
    tmp = np.empty((slices, PATCH, PATCH, CLASSES), np.float32)
    acc = np.zeros((*vol.shape, CLASSES), np.float32)
    wsum = np.zeros(vol.shape, np.float32)
    windows = sliding_windows(vol.shape, PATCH, OVERLAP)
    for first in range(0, len(windows), BATCH):
        batch = windows[first : first + BATCH]
        for a in range(0, PATCH, slices):
            for win in batch:
                np.multiply(pred[a : a + slices], w3[a : a + slices], out=tmp)
                rows = (slice(win[0].start + a, win[0].start + a + slices), *win[1:])
                acc[rows] += tmp
                wsum[rows] += w[a : a + slices]


def run_patchify(vol: np.ndarray, output: str) -> None:
    import patchify

    step = int(PATCH * (1 - OVERLAP))
    grid = patchify.patchify(vol, (PATCH,) * 3, step=step)
    patches = grid.reshape(-1, PATCH, PATCH, PATCH)
    model = channel_last_model()
    preds = np.empty((len(patches), PATCH, PATCH, PATCH, CLASSES), np.float32)
    for i in range(0, len(patches), BATCH):
        preds[i : i + BATCH] = model(patches[i : i + BATCH, ..., None])
    probs = np.stack(
        [
            patchify.unpatchify(preds[..., c].reshape(*grid.shape[:3], PATCH, PATCH, PATCH), vol.shape)
            for c in range(CLASSES)
        ],
        axis=-1,
    )
    if output == "labels":
        probs.argmax(-1).astype(np.uint8)


def run_monai(vol: np.ndarray, output: str) -> None:
    import torch
    from monai.inferers import sliding_window_inference

    fixed = scores(channel_first=True)

    def net(batch: torch.Tensor) -> torch.Tensor:  # a fresh array each call: MONAI scales it in place
        return torch.from_numpy(stand_in(fixed, batch.shape[0]))

    with torch.no_grad():
        probs = sliding_window_inference(
            torch.from_numpy(vol)[None, None], (PATCH,) * 3, BATCH, net, overlap=OVERLAP, mode="gaussian"
        )
        if output == "labels":
            probs.argmax(1).to(torch.uint8)


#: What each side imports before its clock starts (the measured call does not pay for imports).
IMPORTS = {
    "predict": ["helpers.inference", "tqdm.auto"],
    "frozen": ["frozen_predict_volume", "tqdm.auto"],
    "floor": ["helpers.patches"],
    "floor_cl": ["helpers.patches", "helpers.stitching"],
    "patchify": ["patchify"],
    "monai": ["torch", "monai.inferers"],
}


def worker(mode: str, n: int, output: str) -> dict:
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    for module in IMPORTS[mode]:
        importlib.import_module(module)
    vol = make_volume(n)
    scores(channel_first=mode == "monai")  # the stand-in's scores, outside the clock and the peak
    fn = {
        "predict": lambda: run_predict(vol, output),
        "frozen": lambda: run_frozen(vol, output),
        "floor": lambda: run_floor(vol),
        "floor_cl": lambda: run_floor_channel_last(vol),
        "patchify": lambda: run_patchify(vol, output),
        "monai": lambda: run_monai(vol, output),
    }[mode]
    rss0 = _status_kb("VmRSS")
    _reset_peak()
    use0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    use1 = resource.getrusage(resource.RUSAGE_SELF)
    extra = (_status_kb("VmHWM") - rss0) * 1024
    return {
        "mode": mode,
        "n": n,
        "output": output,
        "seconds": seconds,
        "user": use1.ru_utime - use0.ru_utime,
        "sys": use1.ru_stime - use0.ru_stime,
        "faults": use1.ru_minflt - use0.ru_minflt + use1.ru_majflt - use0.ru_majflt,
        "model": MODEL_SECONDS[0],
        "extra_over_input": extra / vol.nbytes,
    }


def busy_cores(interval: float = 0.5) -> float:
    """Cores busy on the whole machine over ``interval`` seconds (/proc/stat; 0 where unreadable)."""

    def sample() -> tuple[int, int]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except OSError:
            return 0, 0
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def wait_idle(max_cores: float, max_wait: float) -> bool:
    """Wait until under ``max_cores`` are busy, at most ``max_wait`` seconds; False if it never was."""
    deadline = time.monotonic() + max_wait
    while busy_cores() >= max_cores:
        if time.monotonic() > deadline:
            return False
    return True


def measure_once(
    mode: str, n: int, output: str, python: str = "", idle: tuple[float, float] = (0.3, 60)
) -> dict:
    """One fresh process of ``mode``, started once the machine is idle (``idle``: cores, seconds)."""
    was_idle = wait_idle(*idle)
    out = subprocess.run(
        [python or sys.executable, __file__, "--worker", mode, str(n), output],
        capture_output=True,
        text=True,
        check=True,
    )
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "idle": was_idle}


def summary(runs: list[dict]) -> dict:
    """Medians of a list of runs, with the range of the seconds and how many started busy."""
    keys = ("seconds", "user", "sys", "faults", "model", "extra_over_input")
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    times = [r["seconds"] for r in runs]
    return {**med, "min": min(times), "max": max(times), "busy": sum(not r["idle"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "N", "OUTPUT"))
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per side, alternating")
    parser.add_argument("--monai-python", default="", help="an interpreter with torch and monai: adds MONAI")
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 256], help="volume edges (voxels)")
    parser.add_argument("--idle-cores", type=float, default=0.3, help="busy cores under which a run starts")
    parser.add_argument("--idle-wait", type=float, default=60, help="seconds to wait for that, per run")
    args = parser.parse_args()
    if args.worker:
        mode, n, output = args.worker
        print(json.dumps(worker(mode, int(n), output)))
        return

    import platform

    from helpers.patches import sliding_windows

    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    print(f"machine: {cpu}, {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    print(f"patch {PATCH}^3, overlap {OVERLAP}, {CLASSES} classes, batch {BATCH}, the same stand-in model")
    print("on every side (fixed scores copied into a fresh array by one NumPy call, in the side's layout);")
    print(f"medians of {args.repeats} fresh processes per side, alternating\n")
    idle = (args.idle_cores, args.idle_wait)
    sides = ["predict", "frozen"] + (["monai"] * bool(args.monai_python))
    rows = []
    for n in args.sizes:
        windows = len(sliding_windows((n, n, n), PATCH, OVERLAP))
        floor = measure_once("floor", n, "probabilities", idle=idle)
        floor["channel_last"] = measure_once("floor_cl", n, "probabilities", idle=idle)["seconds"]
        for output in ("probabilities", "labels"):
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for _ in range(args.repeats):
                for side in sides:
                    python = args.monai_python if side == "monai" else ""
                    runs[side].append(measure_once(side, n, output, python, idle))
            pf = measure_once("patchify", n, output, idle=idle)
            rows.append((n, windows, output, {k: summary(v) for k, v in runs.items()}, floor, pf))
    head = (
        f"{'volume':>7s} {'output':>13s} {'side':>8s} | {'median s':>8s} {'range s':>11s} {'user s':>6s} "
        f"{'sys s':>5s} {'faults':>7s} {'model s':>7s} {'mem/input':>9s} | "
        f"{'vs ours':>7s} {'less model':>10s}"
    )
    print(head)
    print("-" * len(head))
    for n, windows, output, sums, floor, pf in rows:
        ours = sums["predict"]["seconds"]
        ours_rest = ours - sums["predict"]["model"]
        for side, m in sums.items():
            print(
                f"{n:>6d}³ {output:>13s} {side:>8s} | {m['seconds']:8.2f} {m['min']:5.2f}-{m['max']:<5.2f} "
                f"{m['user']:6.2f} {m['sys']:5.2f} {m['faults']:7.0f} {m['model']:7.2f} "
                f"{m['extra_over_input']:9.2f} | {m['seconds'] / ours:7.2f} "
                f"{(m['seconds'] - m['model']) / ours_rest:10.2f}"
            )
        print(
            f"{'':>7s} {'':>13s} {'floor':>8s} | {floor['seconds']:8.2f}   "
            f"(predict_volume / floor {ours / floor['seconds']:.2f}); channel-last "
            f"{floor['channel_last']:.2f} s (floor / it {floor['seconds'] / floor['channel_last']:.2f})"
        )
        print(
            f"{'':>7s} {'':>13s} {'':>8s} | patchify route {pf['seconds']:.2f} s, "
            f"mem/input {pf['extra_over_input']:.2f}; {windows} windows"
        )
    busy = sum(m["busy"] for *_, sums, _, _ in rows for m in sums.values())
    print("\nvs ours: the side's median time / predict_volume's median time, same output and size")
    print("less model: the same ratio with each side's median time inside its stand-in model taken away")
    print("  (targets at 384³: frozen >= 2.5 for probabilities; MONAI >= 1 for probabilities, >= 4 labels)")
    print("sys s, faults: kernel CPU time and page faults (minor + major) inside the measured call")
    print("model s: time inside the stand-in model; mem/input: peak RSS above the input / input bytes")
    print("  (target: labels <= 1.5 at 384³)")
    print("floor: one-thread channel-first weighted adds, precomputed prediction; channel-last: the")
    print(f"  same adds into (Z, Y, X, C) sums, {chunk_slices()} Z slices of every window of a batch in turn")
    print("patchify: patchify -> model -> unpatchify per class (non-overlapping patches kept, no blending)")
    print(f"runs started busy (over {args.idle_cores} cores after {args.idle_wait:.0f} s of waiting): {busy}")


if __name__ == "__main__":
    main()
