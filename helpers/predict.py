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

from helpers.checks import check_image
from helpers.datasets import CHANNEL_PATTERN, check_channel_count, load_channels, volume_files, volume_stem
from helpers.geometry import to_working_grid
from helpers.io import save_volume
from helpers.preprocessing import apply_normalisation
from helpers.volume import Volume, VolumeError


def find_scans(inputs: Sequence[str | os.PathLike[str]], n_channels: int = 1) -> dict[str, list[Path]]:
    """Expand INPUT arguments into scans by case name, each a list of its channel files.

    Each input is a scan file, a DICOM series folder, or a folder of those (a folder
    holding volume files or sub-folders; any other folder is one DICOM series). A file
    whose name ends in ``_NNNN`` with NNNN below ``n_channels`` is that channel of case
    ``name``: ``case_0000.nii.gz`` and ``case_0001.nii.gz``, given together or found in
    one folder, are one scan of two channels, as nnU-Net names them. A file of several
    channels on a fourth axis (MSD) is one scan by itself.

    Raises
    ------
    ValueError
        Two inputs that would share one output name (``<case>_seg.nii.gz``), or two
        files for the same channel of a case; nothing has run yet.
    """
    items: list[Path] = []
    for item in inputs:
        path = Path(item)
        inner = volume_files(path) if path.is_dir() else []
        items += inner or [path]
    groups: dict[str, dict[int, Path]] = {}
    for path in items:
        stem = volume_stem(path)
        match = CHANNEL_PATTERN.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if not match or channel >= n_channels:
            case, channel = stem, 0
        seen = groups.setdefault(case, {})
        other = seen.get(channel) or next((p for p in seen.values() if p.parent != path.parent), None)
        if other is not None:
            raise ValueError(
                f"inputs would overwrite each other's output: {other} and {path} -> {case}_seg.nii.gz. "
                "Rename one of them or segment them into separate output folders"
            )
        seen[channel] = path
    return {case: [channels[c] for c in sorted(channels)] for case, channels in groups.items()}


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
    probs float16 (Z, Y, X, n_classes) or None. The working memory beyond the scan and
    the result is about the working grid's image and, with ``probabilities``, its float16
    probabilities.
    """
    from helpers.inference import predict_volume
    from helpers.postprocessing import keep_largest_component

    names = info.get("channel_names", ["image"])
    scan = check_channel_count(scan, len(names), "the model takes", names)
    check_image(scan.array, scan.path or "scan")
    work, record = to_working_grid(scan, info["target_spacing"])
    image = apply_normalisation(work.array, info["normalisation"])
    del work
    n_classes = len(info["class_names"])
    output = "probabilities" if probabilities else "labels"
    # probabilities are written as float16: kept so on the working grid too (half the memory),
    # each class in one block (channel-first), as the inversion reads them
    out = np.moveaxis(np.empty((n_classes, *image.shape[:3]), np.float16), 0, -1) if probabilities else None
    pred = predict_volume(
        model,
        image,
        patch_size=tuple(info["patch_size"]),
        overlap=overlap,
        batch_size=batch_size,
        output=output,
        progress=progress,
        tta=tta,
        out=out,
    )
    del image
    if not probabilities:
        labels, probs = record.invert(pred, labels=True, n_classes=n_classes), None
    else:
        probs = record.invert(pred, labels=False, dtype=np.float16)
        del pred, out
        labels = np.empty(probs.shape[:3], np.uint8)
        for z in range(0, len(labels), 16):  # argmax's int64 result, a slab at a time
            labels[z : z + 16] = np.argmax(probs[z : z + 16], axis=-1)
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

    from helpers.experiment import load_trained, read_model_info

    start = time.perf_counter()
    info = read_model_info(run_dir)
    channels = info.get("channel_names", ["image"])
    scans = find_scans(inputs, len(channels))
    _check_keep_largest(keep_largest, info["class_names"])
    model, info = load_trained(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    for name, paths in tqdm(scans.items(), desc="predict", unit="scan", disable=not progress):
        path = paths[0] if len(paths) == 1 else paths[0].parent / f"{name}_*"
        try:
            if 1 < len(paths) != len(channels):
                raise VolumeError(
                    paths[0], f"case {name!r} has {len(paths)} channel files, the model takes {len(channels)}"
                )
            scan = load_channels(paths)
            labels, probs = segment(
                model, info, scan, overlap, batch_size, probabilities, tta=tta, keep_largest=keep_largest
            )
            written.append(save_volume(out / f"{name}_seg.nii.gz", labels, affine=scan.affine))
            if probs is not None:
                save_volume(out / f"{name}_prob.npz", probs, affine=scan.affine)
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
