"""Random 3-D augmentation of one training patch: flips and quarter turns, scale, intensity.

:class:`helpers.sampling.PatchSampler` calls :func:`augment_patch` on every training patch.
``kind="flips"`` (the profiles' default) flips and turns; ``kind="full"`` then also zooms in
and changes contrast and brightness, as nnU-Net's training does. Each step is a plain
function of arrays and a NumPy generator, so 04 can show what each one does to a patch.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from helpers.config import AUGMENTATIONS  # the kinds augment_patch knows (a profile parameter)


def check_augmentation(value: object, name: str = "kind") -> str:
    """``value`` if it names a kind of :func:`augment_patch`, else a ValueError naming ``name``."""
    if value not in AUGMENTATIONS:
        raise ValueError(f"{name}={value!r}: known augmentations are {', '.join(AUGMENTATIONS)}")
    return str(value)


def flip_and_turn(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random flip along each axis and a random number of quarter turns in one plane whose
    two axes are equal, the same for ``image`` (Z, Y, X, C) and ``labels`` (Z, Y, X)."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    planes = [(a, b) for a, b in ((0, 1), (0, 2), (1, 2)) if labels.shape[a] == labels.shape[b]]
    if planes:
        plane = planes[rng.integers(len(planes))]
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k, plane), np.rot90(labels, k, plane)
    return image, labels


def zoom_in(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, max_zoom: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Magnify the patch by a random factor in [1, ``max_zoom``]: its central part, resampled back
    to the patch's shape (image linearly, per channel; labels by nearest neighbour). Structures
    look up to ``max_zoom`` times larger, as in a scan of finer voxels. Shapes are kept.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> image, labels = zoom_in(np.zeros((32, 32, 32, 1), np.float32), np.zeros((32, 32, 32), np.uint8), rng)
    >>> image.shape, labels.shape
    ((32, 32, 32, 1), (32, 32, 32))
    """
    factor = rng.uniform(1.0, max_zoom)
    shape = np.array(labels.shape)
    crop = np.maximum(np.round(shape / factor).astype(int), 1)
    start = (shape - crop) // 2
    window = tuple(slice(s, s + c) for s, c in zip(start, crop, strict=True))
    zoom = shape / crop
    out = np.stack(
        [ndimage.zoom(image[(*window, c)], zoom, order=1, mode="nearest") for c in range(image.shape[-1])],
        axis=-1,
    )
    return out.astype(image.dtype, copy=False), ndimage.zoom(labels[window], zoom, order=0, mode="nearest")


def jitter_intensity(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    contrast: tuple[float, float] = (0.75, 1.25),
    brightness: float = 0.1,
) -> np.ndarray:
    """Per channel: stretch the intensities about their mean by a random factor in ``contrast``
    and shift them by a random amount in [-``brightness``, ``brightness``] (z-score units), as
    another scanner or protocol would. ``image`` (Z, Y, X, C) float32; returns a new array."""
    mean = image.mean(axis=(0, 1, 2), keepdims=True)
    factor = rng.uniform(*contrast, size=image.shape[-1]).astype(np.float32)
    shift = rng.uniform(-brightness, brightness, size=image.shape[-1]).astype(np.float32)
    return ((image - mean) * factor + mean + shift).astype(image.dtype, copy=False)


def augment_patch(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, kind: str = "flips"
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one patch, image (Z, Y, X, C) and labels (Z, Y, X) alike: ``kind="flips"`` flips and
    turns (:func:`flip_and_turn`); ``"full"`` then zooms in (:func:`zoom_in`) and jitters the
    intensities (:func:`jitter_intensity`). The flips draw from ``rng`` first, so a seed gives the
    same flips and turns with either kind."""
    check_augmentation(kind)
    image, labels = flip_and_turn(image, labels, rng)
    if kind == "full":
        image, labels = zoom_in(image, labels, rng)
        image = jitter_intensity(image, rng)
    return image, labels
