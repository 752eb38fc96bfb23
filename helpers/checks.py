"""Array validators, one per concept: a volume, an affine, finite values, an image, a label map.

Each returns what it checked or raises :class:`helpers.volume.VolumeError` naming the argument or file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from helpers.memory import release_pages
from helpers.volume import VolumeError


def check_volume(array: Any, path: Any = "volume") -> np.ndarray:
    """Return ``array`` if it is a non-empty, real-valued (Z, Y, X) or (Z, Y, X, C) volume.

    The one shape-and-dtype validator for volumes, whether read from a file or passed
    as an argument. ``path`` names the file or the argument in the error. Memory maps
    and other array-likes with ``shape`` and ``dtype`` are checked without being read.

    Raises
    ------
    VolumeError
        Fewer than 3 or more than 4 axes, an empty axis, complex or non-numeric values.
    """
    if array is None or not (hasattr(array, "shape") and hasattr(array, "dtype")):
        array = np.asarray(array)
    if array.ndim < 3:
        raise VolumeError(path, f"is {array.ndim}-D with shape {array.shape}; a 3-D volume is needed")
    if array.ndim > 4:
        raise VolumeError(path, f"has {array.ndim} dimensions {array.shape}; expected (Z, Y, X[, C])")
    if 0 in array.shape:
        raise VolumeError(path, f"is empty (shape {array.shape})")
    kind = array.dtype.kind
    if kind == "c":
        raise VolumeError(path, f"holds complex values ({array.dtype}); a volume must be real")
    if kind not in "biuf":
        raise VolumeError(path, f"holds {array.dtype} values, not numbers")
    return array


def check_affine(affine: Any, path: Any = "affine") -> np.ndarray:
    """Return ``affine`` as a finite, invertible (4, 4) float64 array, or raise VolumeError."""
    try:
        affine = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise VolumeError(path, f"affine is not numeric ({err})") from None
    if affine.shape != (4, 4):
        raise VolumeError(path, f"affine must be 4x4, got shape {affine.shape}")
    if not np.isfinite(affine).all():
        raise VolumeError(path, "affine holds NaN or Inf")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(path, "affine is singular (a zero voxel size or collapsed axes)")
    return affine


# ------------------------------------------------------------------- validation


_CHUNK = 8


def check_finite(volume: Any, path: Any = "volume", origin: Sequence[int] = (0, 0, 0)) -> None:
    """Raise VolumeError if a float ``volume`` holds NaN or Inf, scanning ``_CHUNK`` Z slices at a time.

    Chunking keeps the temporary mask small and reads a memory map piece by piece; a
    chunked store (zarr, h5py) is read in its own chunks, so each is decompressed once.
    ``origin`` (Z, Y, X) is added to the reported index when ``volume`` is a block of a
    larger volume.
    """
    if not np.issubdtype(volume.dtype, np.floating):
        return
    zstep, ystep = _CHUNK, volume.shape[1]
    stored = getattr(volume, "chunks", None)
    if stored is not None and not isinstance(volume, np.ndarray):  # zarr, h5py: whole stored chunks
        zstep, ystep = max(_CHUNK, int(stored[0])), int(stored[1])
    for z0 in range(0, volume.shape[0], zstep):
        for y0 in range(0, volume.shape[1], ystep):
            chunk = np.asarray(volume[z0 : z0 + zstep, y0 : y0 + ystep])
            finite = np.isfinite(chunk).all()
            release_pages(volume)  # after the last use of the chunk, a view into a memory map
            if not finite:
                bad = np.argwhere(~np.isfinite(chunk))[0]
                where = (
                    int(bad[0]) + z0 + origin[0],
                    int(bad[1]) + y0 + origin[1],
                    int(bad[2]) + origin[2],
                    *map(int, bad[3:]),
                )
                raise VolumeError(path, f"contains NaN or Inf (first at index {where})")


def check_image(image: Any, path: Any = "image") -> np.ndarray:
    """Return ``image`` if it is a valid volume (:func:`check_volume`) without NaN or Inf."""
    image = check_volume(image, path)
    check_finite(image, path)
    return image


def check_labels(
    labels: Any, n_classes: int | None = None, path: Any = "labels", convert: bool = True
) -> np.ndarray:
    """Return ``labels`` as a 3-D integer array of class indices, or raise VolumeError.

    Non-finite, non-integer and negative values, and values >= ``n_classes``, are
    refused. The scan reads ``_CHUNK`` Z slices at a time, so a memory map is not
    loaded whole. Integral floats are converted to integers. Integer labels come back
    as uint8 when they fit, or unchanged (no copy) with ``convert=False``.
    """
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        labels = np.asarray(labels)
    if labels.ndim != 3 or 0 in labels.shape:
        raise VolumeError(path, f"labels must be a non-empty 3-D (Z, Y, X) array, got shape {labels.shape}")
    integer = np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool
    if not integer and not (np.issubdtype(labels.dtype, np.floating)):
        raise VolumeError(path, f"labels must be integer class indices, got dtype {labels.dtype}")
    lo, hi = None, None
    for z0 in range(0, labels.shape[0], _CHUNK):
        chunk = np.asarray(labels[z0 : z0 + _CHUNK])
        if not integer:
            if not np.isfinite(chunk).all():
                raise VolumeError(path, "labels must be finite integers; they hold NaN or Inf")
            if np.any(chunk != np.round(chunk)):
                raise VolumeError(path, "labels hold non-integer values; expected class indices")
        c_lo, c_hi = chunk.min(), chunk.max()
        release_pages(labels)  # after the last use of the chunk, a view into a memory map
        lo = c_lo if lo is None else min(lo, c_lo)
        hi = c_hi if hi is None else max(hi, c_hi)
    lo, hi = int(lo), int(hi)
    if lo < 0:
        raise VolumeError(path, f"labels hold negative values (min {lo}); expected 0..n_classes-1")
    if n_classes is not None and hi >= n_classes:
        raise VolumeError(path, f"labels hold value {hi} >= n_classes={n_classes}; remap them first")
    if integer and not convert:
        return labels
    dtype = np.uint8 if hi < 256 else np.int32 if hi < 2**31 else np.int64
    return np.asarray(labels).astype(dtype)
