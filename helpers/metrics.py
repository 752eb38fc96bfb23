"""Segmentation scores for whole label volumes, in plain NumPy.

All functions take integer label arrays of equal shape (any number of
dimensions) holding class indices 0..n_classes-1.

Absent classes: a class that appears neither in the truth nor in the prediction
has no defined IoU or Dice (0/0). Per-class functions return NaN for it, and
:func:`mean_iou` / :func:`mean_dice` ignore NaN, so a volume without pyrite is
not punished (nor rewarded) for predicting no pyrite. A class present in only one
of the two scores 0.
"""

from __future__ import annotations

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


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: row = true class, column = predicted class."""
    truth, pred = _check(truth, pred, n_classes)
    flat = truth.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


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


def mean_iou(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean of :func:`iou_per_class` over the classes present in truth or prediction."""
    return float(np.nanmean(iou_per_class(truth, pred, n_classes)))


def mean_dice(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean of :func:`dice_per_class` over the classes present in truth or prediction."""
    return float(np.nanmean(dice_per_class(truth, pred, n_classes)))


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray | float]:
    """Per-class IoU and Dice and their means from a confusion matrix (for tables)."""
    iou, dice = _per_class(cm, dice=False), _per_class(cm, dice=True)
    return {
        "iou": iou,
        "dice": dice,
        "mean_iou": float(np.nanmean(iou)),
        "mean_dice": float(np.nanmean(dice)),
    }
