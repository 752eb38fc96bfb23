"""07's blockwise prediction on CPU workers: TensorFlow's threads shared out, or left as they are.

Run: ``.venv/bin/python benchmarks/zarr_threads.py`` (about 6 minutes on 2 cores).

:func:`helpers.distributed.predict_zarr` starts a LocalCluster of ``--workers`` processes.
Left alone, each worker's TensorFlow starts thread pools as wide as the machine;
the course gives each its share of the cores (:func:`helpers.distributed.worker_threads_env`).
Both ways predict the same sandstone zarr with an untrained U-Net (the speed does not
depend on the weights), alternately, ``--repeats`` times each; the ratio is against
the pools left alone, in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import helpers  # noqa: F401  (before Keras)

# isort: split
import helpers.distributed as distributed
from helpers.datasets import write_sandstone_zarr

HERE = Path(__file__).resolve().parent


def unet():
    """The course's U-Net at 32^3, untrained: what the workers load."""
    from helpers.model import build_unet

    return build_unet(4, patch_size=32)


def timed(source: Path, target: Path, workers: int, chunk: int, share: bool) -> float:
    shutil.rmtree(target, ignore_errors=True)
    chosen = distributed.worker_threads_env
    if not share:
        distributed.worker_threads_env = lambda n, gpus=None: {}
    try:
        start = time.perf_counter()
        distributed.predict_zarr(
            "zarr_threads:unet", source, target, patch_size=32, overlap=0.5, batch_size=4,
            n_classes=4, chunks=chunk, n_workers=workers, progress=False,
        )
        return time.perf_counter() - start
    finally:
        distributed.worker_threads_env = chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    paths = [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)  # the workers import zarr_threads:unet
    sys.path.insert(0, str(HERE))
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; {args.size}^3 sandstone, "
          f"{args.chunk}^3 chunks, {args.workers} workers, U-Net 32^3 windows, overlap 0.5, batch 4")
    print(f"shared out: {distributed.worker_threads_env(args.workers)}")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.zarr"
        write_sandstone_zarr(source, (args.size,) * 3, chunks=args.chunk)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for share in (False, True):
                times[share].append(timed(source, Path(tmp) / "out.zarr", args.workers, args.chunk, share))
    alone, shared = statistics.median(times[False]), statistics.median(times[True])
    runs = {share: ", ".join(f"{t:.1f}" for t in times[share]) for share in times}
    print("\n| TensorFlow threads per worker | runs (s) | median (s) | / left alone |\n|---|---|---|---|")
    print(f"| left alone | {runs[False]} | {alone:.1f} | 1.00 |")
    print(f"| shared out | {runs[True]} | {shared:.1f} | {shared / alone:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
