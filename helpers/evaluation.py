"""Scoring a trained model: per case, at each scan's native resolution, against a baseline.

:func:`score_test` predicts every case (or the slab) of a split part, brings the
prediction back to the scan's own grid and scores it there (IoU, Dice, HD95 in mm);
:func:`write_scores` saves the result as JSON and CSV; :func:`multiotsu_baseline` is
the classic thresholding by intensity alone, :func:`fit_thresholds` the fairer one: the
thresholds that separate the training part's labelled classes best. The U-Net must beat
the stronger of the two.
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
    With ``baseline``, two classical baselines are scored the same way on the embedded
    demos (one channel, classes told apart by intensity): multi-Otsu thresholding
    (``result["baseline"]``) and thresholds fitted on the training part's labels
    (``result["fitted"]``, :func:`fit_thresholds`). A case without a scan file (the
    embedded demos, generated on their own grid) is scored on that grid.
    """
    settings = {"overlap": overlap, "tta": tta, "keep_largest": list(keep_largest)}
    scored = score_settings(model, ds, params, part, {"run": settings}, baseline=baseline, progress=progress)
    return scored["run"]


def score_settings(
    model: Any,
    ds: Dataset,
    params: dict[str, Any],
    part: str,
    settings: dict[str, dict[str, Any]],
    *,
    baseline: bool = False,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """:func:`score_test`'s result for each of several prediction ``settings``, reading ``part`` once.

    ``settings`` maps a name to ``{"overlap", "tta", "keep_largest"}`` (missing or None:
    the defaults). Settings that differ only in ``keep_largest`` share one prediction, so
    every setting of a part is predicted and scored the same way, from whole cases.
    """
    from helpers.inference import predict_volume
    from helpers.metrics import case_scores
    from helpers.postprocessing import keep_largest_component

    patch = tuple(model.input_shape[1:4])
    per_case: dict[str, dict[str, Any]] = {name: {} for name in settings}
    per_case_base, per_case_fit, shapes = {}, {}, {}
    fitted = None
    if baseline and ds.name in DATASETS:
        fitted = fit_thresholds(*ds.arrays("train"), ds.n_classes)
    for case, region in ds.part(part):
        if ds.split["kind"] == "slabs" or case.labels_path is None:
            truth, spacing, native = case.labels[region], ds.target_spacing, False
        else:
            (truth, spacing), native = native_labels(ds, case.name), True
        shapes[case.name] = list(truth.shape)
        predictions: dict[tuple[float, str | None], np.ndarray] = {}
        for name, chosen in settings.items():
            overlap = params["overlap"] if chosen.get("overlap") is None else float(chosen["overlap"])
            key = (overlap, chosen.get("tta"))
            if key not in predictions:
                predictions[key] = predict_volume(
                    model,
                    case.image[region],
                    patch_size=patch,
                    overlap=overlap,
                    batch_size=params["batch_size"],
                    output="labels",
                    progress=progress,
                    tta=key[1],
                )
            pred = predictions[key]
            if len(chosen.get("keep_largest") or ()):
                pred = keep_largest_component(pred, chosen["keep_largest"])
            if native:
                pred = case.resampling.invert(pred, labels=True, n_classes=ds.n_classes)
            per_case[name][case.name] = case_scores(truth, pred, ds.class_names, spacing)
        if fitted is not None:
            guess = multiotsu_baseline(case.image[region], ds.n_classes)
            per_case_base[case.name] = case_scores(truth, guess, ds.class_names, spacing)
            guess = apply_thresholds(case.image[region], *fitted)
            per_case_fit[case.name] = case_scores(truth, guess, ds.class_names, spacing)
        release_pages(case.image)  # a cached case's memory map leaves the process's memory
        release_pages(case.labels)
    grid = "working" if ds.split["kind"] == "slabs" else "native"
    out = {}
    for name in settings:
        result: dict[str, Any] = {"part": part, "classes": list(ds.class_names), "shapes": shapes}
        result["grid"] = grid
        methods = (("unet", per_case[name]), ("baseline", per_case_base), ("fitted", per_case_fit))
        for label, scores in methods:
            if scores:
                result[label] = _summary(scores)
        if fitted is not None:
            result["fitted_thresholds"] = {"thresholds": fitted[0].tolist(), "order": fitted[1].tolist()}
        result["baseline_note"] = (
            "multi-Otsu thresholding, classes in intensity order; fitted thresholds: the training "
            "part's best threshold between each pair of classes adjacent in intensity"
            if per_case_base
            else "no classical baseline: thresholds assume classes told apart by intensity, which a "
            "dataset of your own need not have"
        )
        out[name] = result
    return out


def _summary(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-case scores and their means over cases (each case's foreground mean, averaged)."""
    from helpers.metrics import count_missed, mean_over_cases

    summary: dict[str, Any] = {m: mean_over_cases(scores, m) for m in ("iou", "dice", "hd95")}
    summary["missed"] = count_missed(scores)
    for key in ("mean_iou", "mean_dice"):
        values = [s[key] for s in scores.values() if s[key] is not None and not np.isnan(s[key])]
        summary[key] = float(np.mean(values)) if values else None
    return {"per_case": scores, **summary}


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
    for method in ("unet", "baseline", "fitted"):
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


def fit_thresholds(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], n_classes: int, bins: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """The best intensity threshold between each pair of classes adjacent in brightness, from labels.

    The classes are put in order of their median intensity in ``images``; between each
    class and the next, the threshold is the one that misclassifies the fewest voxels of
    those two classes (on a histogram of ``bins`` bins; among equally good ones, the
    middle). A fair classical baseline: what thresholding can do when it knows the labels,
    unlike multi-Otsu, which sees only the intensities.

    Parameters
    ----------
    images, labels : sequences of arrays (Z, Y, X)
        The training part: float intensities and class indices (uint8), pairwise of one shape.
    n_classes : int

    Returns
    -------
    thresholds : float64 (k - 1,)
        Increasing, between the k classes present.
    order : int64 (k,)
        The classes present, darkest first; :func:`apply_thresholds` maps back to them.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.integers(0, 2, (20, 20, 20)).astype(np.uint8)
    >>> image = truth * 2.0 + rng.normal(0, 0.3, truth.shape)
    >>> t, order = fit_thresholds([image], [truth], 2)
    >>> bool(abs(t[0] - 1.0) < 0.1), order.tolist()
    (True, [0, 1])
    """
    values = np.concatenate([np.asarray(i, np.float32).ravel() for i in images])
    classes = np.concatenate([np.asarray(lab).ravel() for lab in labels])
    present = [c for c in range(n_classes) if np.any(classes == c)]
    if len(present) < 2:
        raise ValueError(f"labels hold {len(present)} class(es); fitting thresholds needs 2 or more")
    order = np.array(sorted(present, key=lambda c: float(np.median(values[classes == c]))))
    edges = np.linspace(values.min(), values.max(), bins + 1)
    counts = {c: np.histogram(values[classes == c], edges)[0] for c in present}
    thresholds = []
    for low, high in zip(order[:-1], order[1:], strict=True):
        # a threshold at edge i: bins < i go to `low`; errors = high below it + low at or above it
        below_high = np.concatenate([[0], np.cumsum(counts[high])])
        above_low = counts[low].sum() - np.concatenate([[0], np.cumsum(counts[low])])
        errors = below_high + above_low
        best = np.flatnonzero(errors == errors.min())
        run = best[: int(np.argmax(np.diff(best) > 1)) + 1] if np.any(np.diff(best) > 1) else best
        thresholds.append((edges[run[0]] + edges[run[-1]]) / 2)  # the middle of a tie (an empty gap)
    return np.maximum.accumulate(np.array(thresholds, np.float64)), order


def apply_thresholds(image: np.ndarray, thresholds: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Class indices (uint8, ``image``'s shape) from :func:`fit_thresholds`' thresholds and class order."""
    return np.asarray(order, np.uint8)[np.digitize(image, thresholds)]


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
