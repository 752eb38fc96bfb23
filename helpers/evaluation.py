"""Scoring a trained model: per case, at each scan's native resolution, against a baseline.

:func:`score_test` predicts every case (or the slab) of a split part, brings the
prediction back to the scan's own grid and scores it there (IoU, Dice, HD95 in mm);
:func:`write_scores` saves the result as JSON and CSV; :func:`multiotsu_baseline` is
the classic thresholding that the U-Net must beat.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.config import DATASETS
from helpers.datasets import Dataset
from helpers.memory import release_pages
from helpers.results import write_json


def native_labels(ds: Dataset, name: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A case's label map (class indices) on its scan's native grid, and that grid's spacing (Z, Y, X).

    Read by :func:`helpers.label_maps.read_label_map`, the reader preprocessing uses.
    """
    from helpers.io import load_volume
    from helpers.label_maps import read_label_map

    case = ds.case(name)
    image = load_volume(case.image_path)
    return read_label_map(case.labels_path, image, label_ids=ds.label_ids).classes, image.spacing


def score_test(
    model: Any,
    ds: Dataset,
    params: dict[str, Any],
    part: str = "test",
    baseline: bool = True,
    progress: bool = True,
    overlap: float | None = None,
    tta: str | None = None,
    keep_largest: Sequence[int] = (),
) -> dict[str, Any]:
    """Score ``model`` on every case (or the slab) of ``part`` at native resolution.

    Each case is predicted on the working grid with overlapping Gaussian-blended
    windows (``overlap``, default ``params["overlap"]``; ``tta="mirror"`` averages the
    flipped predictions; ``keep_largest`` keeps the largest component of those classes),
    brought back to the scan's grid (:meth:`helpers.geometry.Resampling.invert`)
    and scored there: IoU, Dice and HD95 (mm) per class, then the mean over cases.
    With ``baseline``, multi-Otsu thresholding is scored the same way, where it
    applies: on the embedded volumes, whose classes are ordered by intensity.
    """
    from helpers.inference import predict_volume
    from helpers.metrics import case_scores, count_missed, mean_over_cases
    from helpers.postprocessing import keep_largest_component

    patch = tuple(model.input_shape[1:4])
    per_case, per_case_base, shapes = {}, {}, {}
    for case, region in ds.part(part):
        pred = predict_volume(
            model,
            case.image[region],
            patch_size=patch,
            overlap=params["overlap"] if overlap is None else overlap,
            batch_size=params["batch_size"],
            output="labels",
            progress=progress,
            tta=tta,
        )
        if len(keep_largest):
            pred = keep_largest_component(pred, keep_largest)
        if ds.split["kind"] == "slabs":
            truth, spacing = case.labels[region], ds.target_spacing
        else:
            pred = case.resampling.invert(pred, labels=True, n_classes=ds.n_classes)
            truth, spacing = native_labels(ds, case.name)
        shapes[case.name] = list(truth.shape)
        per_case[case.name] = case_scores(truth, pred, ds.class_names, spacing)
        if baseline and ds.name in DATASETS:
            guess = multiotsu_baseline(case.image[region], ds.n_classes)
            per_case_base[case.name] = case_scores(truth, guess, ds.class_names, spacing)
        release_pages(case.image)  # a cached case's memory map leaves the process's memory
        release_pages(case.labels)
    grid = "working" if ds.split["kind"] == "slabs" else "native"
    result: dict[str, Any] = {"part": part, "classes": list(ds.class_names), "shapes": shapes, "grid": grid}
    for label, scores in (("unet", per_case), ("baseline", per_case_base)):
        if not scores:
            continue
        summary = {m: mean_over_cases(scores, m) for m in ("iou", "dice", "hd95")}
        summary["missed"] = count_missed(scores)
        for key in ("mean_iou", "mean_dice"):  # each case's foreground mean, averaged over cases
            values = [s[key] for s in scores.values() if s[key] is not None and not np.isnan(s[key])]
            summary[key] = float(np.mean(values)) if values else None
        result[label] = {"per_case": scores, **summary}
    result["baseline_note"] = (
        "multi-Otsu thresholding, classes in intensity order"
        if per_case_base
        else "no multi-Otsu baseline: it assumes classes ordered by intensity, which a dataset of "
        "your own need not have"
    )
    return result


#: The ``class`` of the foreground-mean row of each case in ``scores.csv``.
FOREGROUND_MEAN = "mean (foreground classes)"


def write_scores(result: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write :func:`score_test`'s result as ``scores.json`` and a per-case, per-class ``scores.csv``.

    Each case's rows end with one whose class is :data:`FOREGROUND_MEAN`: the mean over
    the foreground classes (class 0 is reported, not averaged).
    """
    import csv
    import io

    from helpers.files import write_text_atomic

    folder = Path(folder)
    json_path = write_json(folder / "scores.json", result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "case", "class", "iou", "dice", "hd95_mm"])
    for method in ("unet", "baseline"):
        for case, s in result.get(method, {}).get("per_case", {}).items():
            for i, cls in enumerate(result["classes"]):
                writer.writerow([method, case, cls, s["iou"][i], s["dice"][i], s["hd95"][i]])
            writer.writerow([method, case, FOREGROUND_MEAN, s["mean_iou"], s["mean_dice"], s["mean_hd95"]])
    csv_path = write_text_atomic(folder / "scores.csv", buf.getvalue())
    return json_path, csv_path


def multiotsu_baseline(image: np.ndarray, n_classes: int) -> np.ndarray:
    """Classic baseline: multi-Otsu thresholds on intensity, classes in intensity order (uint8)."""
    from skimage.filters import threshold_multiotsu

    thresholds = threshold_multiotsu(image, classes=n_classes)
    return np.digitize(image, thresholds).astype(np.uint8)


def with_context(
    region: tuple[slice, ...], shape: tuple[int, ...], margin: int | tuple[int, int, int]
) -> tuple[tuple[slice, slice, slice], tuple[slice, slice, slice]]:
    """Grow a (Z, Y, X) ``region`` by ``margin`` voxels per side within ``shape``.

    Returns ``(grown, inner)``: predict on ``volume[grown]`` so that the windows at the
    region's faces see real neighbours, then score ``prediction[inner]``, which is the
    original region. ``slice(None)`` entries mean the whole axis.

    >>> grown, inner = with_context((slice(96, 128), slice(None), slice(None)), (128, 50, 50), 32)
    >>> grown[0], inner[0], grown[1]
    (slice(64, 128, None), slice(32, 64, None), slice(0, 50, None))
    """
    margins = (margin,) * 3 if isinstance(margin, int) else tuple(margin)
    grown, inner = [], []
    for sl, size, m in zip(region[:3], shape[:3], margins, strict=True):
        start, stop, _ = sl.indices(size)
        lo, hi = max(0, start - m), min(size, stop + m)
        grown.append(slice(lo, hi))
        inner.append(slice(start - lo, stop - lo))
    return tuple(grown), tuple(inner)  # type: ignore[return-value]
