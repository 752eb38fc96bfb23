"""Segment new scans with a trained run: ``python -m helpers.predict RUN_DIR INPUT... -o OUT_DIR``.

Each INPUT is a scan file (NIfTI, ``.npz``, ``.npy``, TIFF), a DICOM series folder,
or a folder of scans. Every scan is brought to the model's working grid exactly as
its training data was (orientation, target spacing, normalisation, all read from
the run's ``model.json``), predicted with overlapping Gaussian-blended windows,
brought back to the scan's own grid, and written as ``<case>_seg.nii.gz`` with the
scan's affine (atomically). ``--probabilities`` also writes float16 class
probabilities, (Z, Y, X, n_classes) with the affine, as ``<case>_prob.npz`` (NIfTI-1
has no float16 type).

A scan that cannot be read is reported with its file and the reason, and the other
scans are still processed; the exit status is 0 only when every scan succeeded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.datasets import VOLUME_SUFFIXES, case_name
from helpers.geometry import to_working_grid
from helpers.io import Volume, VolumeError, check_image, load_volume, save_volume
from helpers.preprocessing import apply_normalisation


def find_scans(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand INPUT arguments into scans: files, DICOM series folders, and folders of those.

    A folder holding volume files or sub-folders is a folder of scans (each sub-folder
    a DICOM series); any other folder is one DICOM series.
    """
    scans: list[Path] = []
    for item in inputs:
        path = Path(item)
        children = sorted(p for p in path.iterdir() if not p.name.startswith(".")) if path.is_dir() else []
        inner = [p for p in children if p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)]
        scans += inner if inner else [path]
    return scans


def segment(
    model: Any,
    info: dict[str, Any],
    scan: Volume,
    overlap: float = 0.5,
    batch_size: int = 2,
    probabilities: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment ``scan`` with a trained model and its ``model.json`` ``info``.

    Returns ``(labels, probs)`` on the scan's native grid: labels uint8 (Z, Y, X),
    probs float32 (Z, Y, X, n_classes) or None.
    """
    from helpers.inference import predict_volume

    check_image(scan.array, scan.path or "scan")
    if scan.array.ndim == 4:
        raise VolumeError(scan.path, f"has {scan.array.shape[3]} channels; the model takes one")
    work, record = to_working_grid(scan, info["target_spacing"])
    image = apply_normalisation(work.array, info["normalisation"])
    n_classes = len(info["class_names"])
    output = "probabilities" if probabilities else "labels"
    pred = predict_volume(
        model,
        image,
        patch_size=tuple(info["patch_size"]),
        overlap=overlap,
        batch_size=batch_size,
        output=output,
        progress=progress,
    )
    if not probabilities:
        return record.invert(pred, labels=True, n_classes=n_classes), None
    probs = record.invert(pred, labels=False)
    return np.argmax(probs, axis=-1).astype(np.uint8), probs


def predict_scans(
    run_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    overlap: float = 0.5,
    batch_size: int = 2,
    probabilities: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment every scan of ``inputs`` and write the results into ``out_dir``.

    Returns {"written": [paths], "failed": {scan: reason}, "seconds": wall time}.
    """
    from tqdm.auto import tqdm

    from helpers.experiment import load_trained

    start = time.perf_counter()
    model, info = load_trained(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    scans = find_scans(inputs)
    for path in tqdm(scans, desc="predict", unit="scan", disable=not progress):
        try:
            scan = load_volume(path)
            labels, probs = segment(model, info, scan, overlap, batch_size, probabilities)
            name = case_name(path)
            written.append(save_volume(out / f"{name}_seg.nii.gz", labels, affine=scan.affine))
            if probs is not None:
                save_volume(out / f"{name}_prob.npz", probs.astype(np.float16), affine=scan.affine)
        except VolumeError as err:
            failed[str(path)] = str(err)
            print(f"error: {err}", file=sys.stderr)
    return {"written": [str(p) for p in written], "failed": failed, "seconds": time.perf_counter() - start}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[0])
    parser.add_argument("run_dir", help="a training run folder holding best.keras and model.json")
    parser.add_argument("inputs", nargs="+", help="scan files, DICOM series folders or folders of scans")
    parser.add_argument("-o", "--out-dir", required=True, help="where <case>_seg.nii.gz files go")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=2, help="windows per model call (default 2)")
    parser.add_argument("--probabilities", action="store_true", help="also write float16 probabilities")
    args = parser.parse_args(argv)
    try:
        result = predict_scans(
            args.run_dir, args.inputs, args.out_dir, args.overlap, args.batch_size, args.probabilities
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_ok, n_bad = len(result["written"]), len(result["failed"])
    print(f"{n_ok} of {n_ok + n_bad} scans segmented into {args.out_dir} in {result['seconds']:.1f} s")
    return 0 if n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
