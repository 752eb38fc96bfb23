"""Segment new scans with a trained run: ``python -m helpers.predict RUN_DIR INPUT... -o OUT_DIR``.

Each INPUT is a scan file (NIfTI, ``.npz``, ``.npy``, TIFF), a DICOM series folder,
or a folder of scans. Every scan is brought to the model's working grid exactly as
its training data was (orientation, target spacing, normalisation, all read from
the run's ``model.json``), predicted with overlapping Gaussian-blended windows,
brought back to the scan's own grid, and written as ``<case>_seg.nii.gz`` with the
scan's affine (atomically). ``--probabilities`` also writes float16 class
probabilities, (Z, Y, X, n_classes) with the affine, as ``<case>_prob.npz`` (NIfTI-1
has no float16 type). ``--tta mirror`` averages the 8 mirrored predictions of every
window (8 x the model time); ``--keep-largest 1,2`` keeps only the largest connected
component of classes 1 and 2, for structures known to be one object.

A scan that fails, for whatever reason, is reported with its file and the reason, and
the other scans are still processed; the exit status is 0 only when every scan
succeeded. Two inputs that would write the same output file, and ``--keep-largest``
classes the model does not have, are refused before anything runs.
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

from helpers.datasets import VOLUME_SUFFIXES, case_name, single_channel
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


def _output_names(scans: Sequence[Path]) -> dict[Path, str]:
    """Each scan's case name, refusing (before anything runs) two scans that would share an output."""
    names = {path: case_name(path) for path in scans}
    by_name: dict[str, list[str]] = {}
    for path, name in names.items():
        by_name.setdefault(name, []).append(str(path))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        listing = "; ".join(f"{' and '.join(paths)} -> {name}_seg.nii.gz" for name, paths in clashes.items())
        raise ValueError(
            f"inputs would overwrite each other's output: {listing}. Rename one of them or segment them "
            "into separate output folders"
        )
    return names


def _check_keep_largest(classes: Sequence[int], class_names: Sequence[str]) -> None:
    """Refuse ``--keep-largest`` classes that are not foreground classes of the model."""
    wrong = [c for c in classes if not 1 <= int(c) < len(class_names)]
    if wrong:
        raise ValueError(
            f"--keep-largest names class(es) {wrong}, but the model's foreground classes are "
            f"1..{len(class_names) - 1} ({', '.join(class_names[1:])})"
        )


def segment(
    model: Any,
    info: dict[str, Any],
    scan: Volume,
    overlap: float = 0.5,
    batch_size: int = 2,
    probabilities: bool = False,
    progress: bool = False,
    tta: str | None = None,
    keep_largest: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment ``scan`` with a trained model and its ``model.json`` ``info``.

    ``tta`` is passed to :func:`helpers.inference.predict_volume`; ``keep_largest``
    lists classes reduced to their largest connected component on the native grid.
    Returns ``(labels, probs)`` on the scan's native grid: labels uint8 (Z, Y, X),
    probs float32 (Z, Y, X, n_classes) or None.
    """
    from helpers.inference import predict_volume
    from helpers.postprocessing import keep_largest_component

    scan = single_channel(scan)
    check_image(scan.array, scan.path or "scan")
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
        tta=tta,
    )
    if not probabilities:
        labels, probs = record.invert(pred, labels=True, n_classes=n_classes), None
    else:
        probs = record.invert(pred, labels=False)
        labels = np.argmax(probs, axis=-1).astype(np.uint8)
    if keep_largest:
        labels = keep_largest_component(labels, keep_largest)
    return labels, probs


def predict_scans(
    run_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    overlap: float = 0.5,
    batch_size: int = 2,
    probabilities: bool = False,
    progress: bool = True,
    tta: str | None = None,
    keep_largest: Sequence[int] = (),
) -> dict[str, Any]:
    """Segment every scan of ``inputs`` and write the results into ``out_dir``.

    ``tta`` and ``keep_largest`` are as for :func:`segment`.

    Returns {"written": [paths], "failed": {scan: reason}, "seconds": wall time}.
    """
    from tqdm.auto import tqdm

    from helpers.experiment import load_trained

    start = time.perf_counter()
    scans = find_scans(inputs)
    names = _output_names(scans)
    model, info = load_trained(run_dir)
    _check_keep_largest(keep_largest, info["class_names"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    for path in tqdm(scans, desc="predict", unit="scan", disable=not progress):
        try:
            scan = load_volume(path)
            labels, probs = segment(
                model, info, scan, overlap, batch_size, probabilities, tta=tta, keep_largest=keep_largest
            )
            name = names[path]
            written.append(save_volume(out / f"{name}_seg.nii.gz", labels, affine=scan.affine))
            if probs is not None:
                save_volume(out / f"{name}_prob.npz", probs.astype(np.float16), affine=scan.affine)
        except Exception as err:  # one scan's failure, whatever raised it, never costs the others
            reason = str(err) if isinstance(err, VolumeError) else f"{path}: {type(err).__name__}: {err}"
            failed[str(path)] = reason
            print(f"error: {reason}", file=sys.stderr)
    return {"written": [str(p) for p in written], "failed": failed, "seconds": time.perf_counter() - start}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[0])
    parser.add_argument("run_dir", help="a training run folder holding best.keras and model.json")
    parser.add_argument("inputs", nargs="+", help="scan files, DICOM series folders or folders of scans")
    parser.add_argument("-o", "--out-dir", required=True, help="where <case>_seg.nii.gz files go")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=2, help="windows per model call (default 2)")
    parser.add_argument("--probabilities", action="store_true", help="also write float16 probabilities")
    parser.add_argument("--tta", choices=["mirror"], help="average the 8 mirrored passes (8 x slower)")
    parser.add_argument(
        "--keep-largest",
        default="",
        metavar="CLASSES",
        help="comma-separated class ids to reduce to their largest connected component",
    )
    args = parser.parse_args(argv)
    try:
        keep = [int(c) for c in args.keep_largest.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--keep-largest must be comma-separated class ids, got {args.keep_largest!r}")
    try:
        result = predict_scans(
            args.run_dir,
            args.inputs,
            args.out_dir,
            args.overlap,
            args.batch_size,
            args.probabilities,
            tta=args.tta,
            keep_largest=keep,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n_ok, n_bad = len(result["written"]), len(result["failed"])
    print(f"{n_ok} of {n_ok + n_bad} scans segmented into {args.out_dir} in {result['seconds']:.1f} s")
    return 0 if n_bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
