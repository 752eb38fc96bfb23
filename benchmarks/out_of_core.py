"""Volumes on disk: peak memory and throughput of the in-memory, out= and Dask routes.

Run: ``.venv/bin/python benchmarks/out_of_core.py`` (about 10 minutes on 2 cores; needs
about 12 GB of free disk for the 1024^3 inputs, written under ``--workdir``).

For n^3 float32 inputs stored on disk (n = 512 and 1024), uint8 labels out, 3 classes,
64^3 windows, overlap 0.5, batch 8 and an almost free model (classes x, 1 - x and 0.5 for
input x: one pass over the batch, so the routes' own overheads show, and labels that vary so
every output chunk is written), each route runs in a fresh process:

- ``in-memory``: ``np.load`` the .npy, ``predict_volume`` into a new array;
- ``out= zarr``: ``predict_volume`` reading the zarr input slab by slab, ``out=`` a zarr store;
- ``out= memmap``: the .npy opened as a memory map, ``out=`` a .npy memory map;
- ``predict_zarr``: Dask, a LocalCluster of 2 worker processes (1 thread each), output chunks
  of 256 x 512 x 512 (flat chunks halve the halo's duplicated windows against 256^3 cubes).

Peak RSS is the kernel's high-water mark of the process (VmHWM); for ``predict_zarr`` it is
the sum over the client (which hosts the scheduler) and the workers. Pages of a memory-
mapped file that the process has touched count in its RSS although the kernel may drop
them at will, so the memmap route's figure is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
PATCH, OVERLAP, CLASSES, BATCH, CHUNK = 64, 0.5, 3, 8, (256, 512, 512)


def two_sided() -> object:
    """The model factory the Dask workers import (``out_of_core:two_sided``).

    Classes (x, 1 - x, 0.5) for input x: one pass over the batch, and labels that vary,
    so the output chunks are really written (zarr skips chunks that are all zero).
    """

    def model(batch: np.ndarray) -> np.ndarray:
        pred = np.empty((*batch.shape[:-1], CLASSES), np.float32)
        pred[..., 0] = batch[..., 0]
        np.subtract(1, batch[..., 0], out=pred[..., 1])
        pred[..., 2] = 0.5
        return pred

    return model


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def prepare(workdir: Path, n: int) -> dict[str, Path]:
    """Write the n^3 input as .npy and as zarr (64^3 chunks), slab by slab; reuse existing files."""
    from helpers.zarr_volumes import create_zarr_volume

    npy, zarr_path = workdir / f"in{n}.npy", workdir / f"in{n}.zarr"
    if not npy.exists() or not zarr_path.exists():
        shutil.rmtree(zarr_path, ignore_errors=True)
        rng = np.random.default_rng(0)
        mm = np.lib.format.open_memmap(workdir / f"in{n}.tmp.npy", "w+", np.float32, (n, n, n))
        z = create_zarr_volume(zarr_path, (n, n, n), np.float32, chunks=64)
        for z0 in range(0, n, 64):
            slab = rng.random((64, n, n), dtype=np.float32)
            mm[z0 : z0 + 64] = slab
            z[z0 : z0 + 64] = slab
        mm.flush()
        del mm
        os.replace(workdir / f"in{n}.tmp.npy", npy)
    return {"npy": npy, "zarr": zarr_path}


def worker(route: str, n: int, workdir: Path) -> dict:
    from helpers.inference import predict_volume
    from helpers.zarr_volumes import create_zarr_volume, open_zarr_volume

    files = prepare(workdir, n)
    out_zarr = workdir / f"out{n}-{route}.zarr"
    shutil.rmtree(out_zarr, ignore_errors=True)
    shutil.rmtree(f"{out_zarr}.progress", ignore_errors=True)
    model = two_sided()
    run = {
        "patch_size": PATCH,
        "overlap": OVERLAP,
        "batch_size": BATCH,
        "output": "labels",
        "progress": False,
    }
    start = time.perf_counter()
    extra = {}
    if route == "in-memory":
        predict_volume(model, np.load(files["npy"]), **run)
    elif route == "out= zarr":
        out = create_zarr_volume(out_zarr, (n, n, n), np.uint8, chunks=64)
        predict_volume(model, open_zarr_volume(files["zarr"]), out=out, **run)
    elif route == "out= memmap":
        out = np.lib.format.open_memmap(workdir / f"out{n}.npy", "w+", np.uint8, (n, n, n))
        predict_volume(model, np.load(files["npy"], mmap_mode="r"), out=out, **run)
        out.flush()
    elif route == "predict_zarr":
        from distributed import Client, LocalCluster

        from helpers.distributed import predict_zarr

        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=40
            ) as cluster,
            Client(cluster) as client,
        ):
            start = time.perf_counter()
            stats = predict_zarr(
                "out_of_core:two_sided",
                files["zarr"],
                out_zarr,
                client=client,
                patch_size=PATCH,
                overlap=OVERLAP,
                batch_size=BATCH,
                chunks=CHUNK,
                progress=False,
            )
            seconds = time.perf_counter() - start
            workers = sum(client.run(_peak_bytes).values())
        extra = {"halo": stats["windows"] / stats["grid_windows"], "workers_peak": workers}
        return {"route": route, "n": n, "seconds": seconds, "peak": _peak_bytes() + workers, **extra}
    seconds = time.perf_counter() - start
    return {"route": route, "n": n, "seconds": seconds, "peak": _peak_bytes(), **extra}


ROUTES = ("in-memory", "out= zarr", "out= memmap", "predict_zarr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("ROUTE", "N"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "bench_out_of_core")
    parser.add_argument("--keep", action="store_true", help="keep the inputs for another run")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.workdir)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}")
    print(f"patch {PATCH}^3, overlap {OVERLAP}, {CLASSES} classes, batch {BATCH}, labels out")
    print("model: classes (x, 1 - x, 0.5) for input x")
    print(f"predict_zarr: LocalCluster of 2 processes x 1 thread, output chunks {CHUNK}\n")
    head = (
        f"{'volume':>7s} {'input GB':>8s} | {'route':>12s} | {'Mvox/s':>7s} {'vs memory':>9s} | "
        f"{'peak GB':>7s} {'x input':>7s}"
    )
    print(head)
    print("-" * len(head))
    for n in args.sizes:
        prepare(args.workdir, n)
        rows = []
        for route in ROUTES:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", route, str(n), "--workdir", str(args.workdir)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        base = rows[0]["seconds"]
        for r in rows:
            note = f"   halo: {r['halo']:.2f}x the windows" if "halo" in r else ""
            print(
                f"{n:>6d}³ {4 * n**3 / 1e9:8.2f} | {r['route']:>12s} | {n**3 / r['seconds'] / 1e6:7.1f} "
                f"{base / r['seconds']:9.2f} | {r['peak'] / 1e9:7.2f} {r['peak'] / (4 * n**3):7.2f}{note}"
            )
        if not args.keep:
            for p in args.workdir.glob(f"*{n}*"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    print("\nvs memory: throughput / the in-memory route's (target for predict_zarr: >= 0.7)")
    print("peak GB: targets for the out-of-core routes: < 1.5 GB at both sizes")


if __name__ == "__main__":
    main()
