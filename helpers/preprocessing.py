"""Intensity normalisation, label remapping and one-hot encoding.

All functions are plain NumPy on (Z, Y, X) or (Z, Y, X, C) arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MODALITIES",
    "apply_normalisation",
    "fit_normalisation",
    "normalize",
    "one_hot",
    "percentile_clip",
    "remap_labels",
    "zscore",
]

#: Modalities a dataset may declare, and the normalisation each gets.
MODALITIES = ("CT", "MR", "other")
#: Foreground voxels sampled per training case for the CT statistics (as nnU-Net).
CT_SAMPLES_PER_CASE = 100_000


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


def fit_normalisation(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], modality: str | Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """Intensity normalisation for a dataset, fitted once on its training cases.

    CT: intensities are in calibrated Hounsfield units, so one global scheme fits
    every scan: the foreground voxels (label > 0) of all training cases, up to
    :data:`CT_SAMPLES_PER_CASE` per case, give the 0.5 and 99.5 percentiles to clip
    to, and the mean and standard deviation of the clipped values (as nnU-Net does).
    MR and other: intensities have no absolute scale, so each case is z-scored on
    its own (the returned dict then holds no numbers).

    Several channels (images (Z, Y, X, C), ``modality`` one per channel): each channel
    is fitted by its own modality's scheme, ``{"scheme": "per-channel", "channels": [...]}``.

    Returns a JSON-ready dict for :func:`apply_normalisation`, to store with the
    dataset and with each trained model so prediction uses the same numbers.
    """
    if not isinstance(modality, str):
        per = [
            fit_normalisation([i[..., c] for i in images], labels, m, seed)  # views: memory maps stay on disk
            for c, m in enumerate(modality)
        ]
        return {"scheme": "per-channel", "channels": per}
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if modality != "CT":
        return {"scheme": "zscore-per-case", "modality": modality}
    rng = np.random.default_rng(seed)
    samples = []
    for image, lab in zip(images, labels, strict=True):
        values = _foreground(image, lab)
        if values.size > CT_SAMPLES_PER_CASE:
            values = rng.choice(values, CT_SAMPLES_PER_CASE, replace=False)
        samples.append(values.astype(np.float64))
    pooled = np.concatenate(samples) if samples else np.zeros(0)
    if pooled.size == 0:
        raise ValueError("CT normalisation needs foreground voxels (label > 0) in the training cases")
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    clipped = np.clip(pooled, lo, hi)
    return {
        "scheme": "ct-clip-zscore",
        "modality": modality,
        "clip": [float(lo), float(hi)],
        "mean": float(clipped.mean()),
        "std": float(clipped.std()) or 1.0,
    }


def _foreground(image: np.ndarray, labels: np.ndarray, slab: int = 16) -> np.ndarray:
    """``image[labels > 0]``, read ``slab`` Z slices at a time: a memory map is never in memory whole."""
    from helpers.memory import release_pages

    parts = []
    for z in range(0, image.shape[0], slab):
        parts.append(np.asarray(image[z : z + slab])[np.asarray(labels[z : z + slab]) > 0])
        release_pages(image)  # the pages read so far leave this process's memory
        release_pages(labels)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def apply_normalisation(image: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Normalise ``image`` with :func:`fit_normalisation`'s ``stats``; float32, same shape."""
    image = np.asarray(image, dtype=np.float32)
    if stats.get("scheme") == "per-channel":
        channels = stats["channels"]
        if image.ndim != 4 or image.shape[3] != len(channels):
            found = image.shape[3] if image.ndim == 4 else 1
            raise ValueError(f"the normalisation is for {len(channels)} channels, the image has {found}")
        return np.stack([apply_normalisation(image[..., c], s) for c, s in enumerate(channels)], axis=-1)
    if stats.get("scheme") == "ct-clip-zscore":
        lo, hi = stats["clip"]
        return (np.clip(image, lo, hi) - np.float32(stats["mean"])) / np.float32(stats["std"])
    if stats.get("scheme") == "zscore-per-case":
        return zscore(image)
    if stats.get("scheme") == "zscore-fixed":  # a per-case z-score whose statistics were taken beforehand
        return (image - np.float32(stats["mean"])) / np.float32(stats["std"] or 1.0)
    raise ValueError(f"unknown normalisation scheme {stats.get('scheme')!r}")
