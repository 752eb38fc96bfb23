"""Segmentation scores for whole label volumes, in plain NumPy.

All functions take integer label arrays of equal shape (any number of
dimensions) holding class indices 0..n_classes-1.

Means are over the foreground classes, 1..n_classes-1: class 0 (the background of a
dataset folder, the sandstone's pore) is scored and reported but not averaged, as
nnU-Net reports, so that a near-perfect background does not lift every mean. With a
single class the mean is that class's score.

Absent classes: a class that appears neither in the truth nor in the prediction
has no defined IoU or Dice (0/0). Per-class functions return NaN for it, and
:func:`mean_iou` / :func:`mean_dice` ignore NaN, so a volume without pyrite is
not punished (nor rewarded) for predicting no pyrite. A class present in only one
of the two scores 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def _check(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} differs from prediction shape {pred.shape}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    for name, a in (("truth", truth), ("pred", pred)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    return truth, pred


#: Voxels counted at a time by :func:`confusion_matrix`: its working memory is about 10 bytes
#: each (a pair code and bincount's int64 copy of it), 40 MB, whatever the volume's size.
CONFUSION_BLOCK = 1 << 22


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class.

    Counted :data:`CONFUSION_BLOCK` voxels at a time, each (truth, prediction) pair coded
    in the smallest integer type that holds n_classes² codes, so a 512 × 512 × 400 scan
    needs tens of MB on top of its two label maps, not the 16 bytes per voxel of int64 codes.
    """
    truth, pred = _check(truth, pred, n_classes)
    code_type = np.min_scalar_type(n_classes * n_classes - 1)
    counts = np.zeros(n_classes * n_classes, np.int64)
    t, p = truth.reshape(-1), pred.reshape(-1)
    for start in range(0, t.size, CONFUSION_BLOCK):
        block = t[start : start + CONFUSION_BLOCK].astype(code_type) * code_type.type(n_classes)
        block += p[start : start + CONFUSION_BLOCK].astype(code_type)
        counts += np.bincount(block, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def _per_class(cm: np.ndarray, dice: bool) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    num = 2 * tp if dice else tp
    den = 2 * tp + fp + fn if dice else tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def iou_per_class(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Intersection over union per class, float64 (n_classes,); NaN for an absent class."""
    return _per_class(confusion_matrix(truth, pred, n_classes), dice=False)


def dice_per_class(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice coefficient 2|A∩B| / (|A|+|B|) per class, float64; NaN for an absent class."""
    return _per_class(confusion_matrix(truth, pred, n_classes), dice=True)


def foreground_mean(per_class: Sequence[float | None]) -> float:
    """Mean of per-class scores over the foreground classes (1..), ignoring n/a (NaN or None).

    Class 0 is left out when there are others. NaN when no foreground class is scored
    (none in the truth nor in the prediction).
    """
    values = np.array([np.nan if v is None else v for v in per_class], dtype=np.float64)
    values = values[1:] if len(values) > 1 else values
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def mean_iou(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean of :func:`iou_per_class` over the foreground classes present in truth or prediction."""
    return foreground_mean(iou_per_class(truth, pred, n_classes))


def mean_dice(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean of :func:`dice_per_class` over the foreground classes present in truth or prediction."""
    return foreground_mean(dice_per_class(truth, pred, n_classes))


def scores_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """Per-class IoU and Dice and their foreground means from a confusion matrix (for tables)."""
    iou, dice = _per_class(cm, dice=False), _per_class(cm, dice=True)
    return {"iou": iou, "dice": dice, "mean_iou": foreground_mean(iou), "mean_dice": foreground_mean(dice)}


def evaluate(truth: np.ndarray, pred: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Per-class IoU and Dice, their means and the confusion matrix, JSON-ready."""
    cm = confusion_matrix(truth, pred, len(class_names))
    s = scores_from_confusion(cm)
    return {
        "classes": list(class_names),
        "iou": [None if np.isnan(v) else float(v) for v in s["iou"]],
        "dice": [None if np.isnan(v) else float(v) for v in s["dice"]],
        "mean_iou": s["mean_iou"],
        "mean_dice": s["mean_dice"],
        "confusion": cm.tolist(),
        "voxels": int(truth.size),
    }


def error_by_distance(
    truth: np.ndarray, pred: np.ndarray, distance: np.ndarray, max_distance: int
) -> np.ndarray:
    """Voxel error rate for each distance 0..max_distance (NaN where no voxel has it)."""
    wrong = (truth != pred).ravel()
    d = np.minimum(distance.ravel(), max_distance + 1)
    n = np.bincount(d, minlength=max_distance + 2)[: max_distance + 1]
    e = np.bincount(d, weights=wrong, minlength=max_distance + 2)[: max_distance + 1]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, e / np.maximum(n, 1), np.nan)


METRIC_LABELS = {"iou": "IoU", "dice": "Dice", "hd95": "HD95 (mm)"}


def scores_table(
    results: dict[str, dict[str, Any]],
    metric: str = "iou",
    columns: Sequence[tuple[str, str]] | None = None,
) -> str:
    """Markdown table of per-class scores, one row per class and a row of foreground means.

    ``results`` maps a method name to :func:`evaluate`'s dict (or one with the same
    keys). By default the columns are every method's ``metric``; ``columns`` picks
    (method, metric) pairs instead, e.g. ``[("U-Net", "iou"), ("U-Net", "hd95")]``.
    n/a marks an absent class; HD95 has two decimals, the overlaps three.
    """
    pairs = list(columns) if columns else [(name, metric) for name in results]
    header = [name if not columns else f"{name} {METRIC_LABELS[m]}" for name, m in pairs]
    classes = results[pairs[0][0]]["classes"]

    def fmt(v: float | None, m: str) -> str:
        return "n/a" if v is None else f"{v:.2f}" if m == "hd95" else f"{v:.3f}"

    rows = [f"| class | {' | '.join(header)} |", "|---" * (len(pairs) + 1) + "|"]
    for i, cls in enumerate(classes):
        rows.append(f"| {cls} | " + " | ".join(fmt(results[n][m][i], m) for n, m in pairs) + " |")
    means = [results[n].get(f"mean_{m}") for n, m in pairs]
    rows.append(
        f"| **mean** (classes 1-{len(classes) - 1}) | "
        + " | ".join("" if v is None else f"**{fmt(v, m)}**" for v, (_, m) in zip(means, pairs, strict=True))
        + " |"
    )
    return "\n".join(rows)


def hd95(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance between two boolean masks, in mm, as MONAI defines it.

    Computed within the masks' joint bounding box (plus one voxel), where every distance
    it needs lies, from the two surfaces' voxels alone: each surface is found
    :data:`SURFACE_SLAB` slices at a time and the nearest surface voxel of the other mask
    looked up in a k-d tree, so memory and time follow the surfaces, not the scan (a
    whole-volume distance transform of a CT's background took 6 GB).

    The surface voxels of each mask (those with a face-neighbour outside it) are
    measured to the nearest surface voxel of the other, with the voxel ``spacing``
    (Z, Y, X) in mm; the 95th percentile is taken in each direction, and the larger of
    the two returned (MONAI's ``compute_hausdorff_distance(..., percentile=95)``;
    nnU-Net reports no HD95). Both masks empty: NaN (the class is absent, n/a). One
    empty: ``inf``, a structure missed entirely or predicted where there is none.

    Example
    -------
    >>> a = np.zeros((1, 1, 12), bool); a[0, 0, :2] = True
    >>> b = a.copy(); b[0, 0, 10] = True  # one stray voxel, 9 mm from a
    >>> round(hd95(a, b), 2)  # b to a: 95th percentile of (0, 0, 9); pooled with a to b's (0, 0): 7.2
    8.1
    """

    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    if truth.shape != pred.shape:
        raise ValueError(f"truth shape {truth.shape} differs from prediction shape {pred.shape}")
    if not truth.any() and not pred.any():
        return float("nan")
    if not truth.any() or not pred.any():
        return float("inf")
    from scipy.spatial import cKDTree

    box = _joint_box(truth, pred)  # the distances lie between voxels of the two masks: exact in it
    scale = np.asarray(spacing, np.float64)
    points_t, points_p = (surface_voxels(m[box]) * scale for m in (truth, pred))
    t_to_p = cKDTree(points_p).query(points_t, workers=-1)[0]
    p_to_t = cKDTree(points_t).query(points_p, workers=-1)[0]
    return float(max(np.percentile(p_to_t, 95), np.percentile(t_to_p, 95)))


#: Z slices of a mask that :func:`surface_voxels` erodes at a time.
SURFACE_SLAB = 32


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """(N, 3) int indices (Z, Y, X) of the voxels of boolean ``mask`` with a face-neighbour outside
    it, the array's edge counting as outside: ``mask & ~binary_erosion(mask, border_value=0)``,
    computed :data:`SURFACE_SLAB` slices at a time (each with its neighbouring slices)."""
    from scipy import ndimage as ndi

    structure = ndi.generate_binary_structure(3, 1)
    found = []
    for z0 in range(0, mask.shape[0], SURFACE_SLAB):
        z1 = min(z0 + SURFACE_SLAB, mask.shape[0])
        lo, hi = max(z0 - 1, 0), min(z1 + 1, mask.shape[0])
        block = mask[lo:hi]
        inner = ndi.binary_erosion(block, structure, border_value=0)[z0 - lo : z1 - lo]
        points = np.argwhere(block[z0 - lo : z1 - lo] & ~inner)
        points[:, 0] += z0
        found.append(points)
    return np.concatenate(found)


def _joint_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``a | b``, grown by one voxel (so erosion sees the masks' edges as
    in the whole volume) and clipped to the array."""
    box = []
    for axis in range(a.ndim):
        others = tuple(i for i in range(a.ndim) if i != axis)
        hits = np.flatnonzero(a.any(axis=others) | b.any(axis=others))
        box.append(slice(max(int(hits[0]) - 1, 0), int(hits[-1]) + 2))
    return tuple(box)


def case_scores(
    truth: np.ndarray, pred: np.ndarray, class_names: Sequence[str], spacing: Sequence[float]
) -> dict[str, Any]:
    """Per-class IoU, Dice and HD95 (mm) of one case, as :func:`evaluate` plus ``hd95``.

    HD95 is computed for every class (the sandstone's class 0, pore, is a phase like
    the others). It is JSON null where the class is absent from both, and also where
    the prediction or the truth lacks it: such a class is listed in ``missed`` (in the
    truth, not predicted: Dice 0) or ``spurious`` (predicted, not in the truth), so
    that it is counted rather than silently dropped from ``mean_hd95``.
    """
    scores = evaluate(truth, pred, class_names)
    distances = [hd95(truth == c, pred == c, spacing) for c in range(len(class_names))]
    scores["hd95"] = [float(d) if np.isfinite(d) else None for d in distances]
    present = [bool(np.any(truth == c)) for c in range(len(class_names))]
    scores["missed"] = [
        n for n, d, t in zip(class_names, distances, present, strict=True) if np.isinf(d) and t
    ]
    scores["spurious"] = [
        n for n, d, t in zip(class_names, distances, present, strict=True) if np.isinf(d) and not t
    ]
    mean_hd95 = foreground_mean(scores["hd95"])
    scores["mean_hd95"] = None if np.isnan(mean_hd95) else mean_hd95
    return scores


def count_missed(per_case: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """{case: classes missed entirely} for the cases of ``per_case`` (:func:`case_scores`) that missed any."""
    return {case: s["missed"] for case, s in per_case.items() if s.get("missed")}


def mean_over_cases(per_case: dict[str, dict[str, Any]], metric: str) -> list[float | None]:
    """Per-class mean of ``metric`` over cases, ignoring cases where the class is n/a (NaN)."""
    rows = np.array(
        [[np.nan if v is None else v for v in s[metric]] for s in per_case.values()], dtype=np.float64
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class n/a in every case: its mean is n/a too
        means = np.nanmean(rows, axis=0) if len(rows) else np.array([])
    return [None if np.isnan(v) else float(v) for v in means]
