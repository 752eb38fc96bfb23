"""Intensity normalisation, label remapping and one-hot encoding.

All functions are plain NumPy on (Z, Y, X) or (Z, Y, X, C) arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["normalize", "percentile_clip", "remap_labels", "one_hot", "zscore"]


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot encode integer ``labels`` (any shape) to float32 (..., n_classes)."""
    return np.eye(n_classes, dtype=np.float32)[labels]


def percentile_clip(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Clip ``image`` to its [low, high] percentiles (outliers such as metal or hot pixels)."""
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    lo, hi = np.percentile(image, [low, high])
    return np.clip(image, lo, hi)


def zscore(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(image - mean) / std as float32, the statistics taken inside ``mask`` if given."""
    image = np.asarray(image, dtype=np.float32)
    values = image[mask] if mask is not None else image
    std = float(values.std())
    return (image - float(values.mean())) / (std if std > 0 else 1.0)


def normalize(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Percentile clipping followed by z-scoring: the course's default, float32 output."""
    return zscore(percentile_clip(np.asarray(image, dtype=np.float32), low, high))


def remap_labels(labels: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Map label values through ``mapping`` (e.g. {1: 0, 2: 1, 3: 2, 4: 3}), uint8 output.

    Every value present in ``labels`` must be a key, so a typo cannot leave a
    stray class behind.
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    missing = [int(v) for v in present if int(v) not in mapping]
    if missing:
        raise ValueError(f"labels hold values {missing} that the mapping does not cover")
    lut = np.zeros(int(present.max()) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        if 0 <= src < len(lut):
            if not 0 <= dst < 256:
                raise ValueError(f"mapped label {dst} does not fit uint8")
            lut[src] = dst
    if present.min() < 0:
        raise ValueError("labels must be non-negative to remap")
    return lut[labels]
