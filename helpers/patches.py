"""Cutting volumes into overlapping patches and stitching them back with blending.

The windows follow nnU-Net: along each axis the starts are spaced evenly from 0 to
``size - patch``, so the last window sits flush with the border and every voxel is
covered, whatever the volume size. Overlapping predictions are blended with a
separable Gaussian importance map (sigma = patch / 8). ``patchify.unpatchify`` blends
nothing: with overlapping steps it keeps only the patches that do not overlap and
throws the others away.

All shapes are ``(Z, Y, X)`` or ``(Z, Y, X, C)``; see :mod:`helpers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from helpers.checks import check_volume

Window = tuple[slice, slice, slice]
Blend = Literal["gaussian", "average", "none"]
BLENDS = ("gaussian", "average", "none")
#: Lowest Gaussian weight, so that no voxel divides by zero or by a denormal.
WEIGHT_FLOOR = 1e-6


def as_patch_shape(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """Normalise ``patch_size`` (an int or 3 ints, voxels) to a 3-tuple, or raise ValueError."""
    if isinstance(patch_size, (int, np.integer)):
        shape = (int(patch_size),) * 3
    else:
        try:
            shape = tuple(int(p) for p in patch_size)
        except TypeError:
            raise ValueError(f"patch_size must be an int or 3 ints, got {patch_size!r}") from None
    if len(shape) != 3 or any(p <= 0 for p in shape):
        raise ValueError(f"patch_size must be positive (one int or 3 ints), got {patch_size!r}")
    return shape  # type: ignore[return-value]


def check_overlap(overlap: float) -> float:
    """Return ``overlap`` as a float if it is in [0, 1), else raise ValueError."""
    if not isinstance(overlap, (int, float, np.floating)) or not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap!r}")
    return float(overlap)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced window starts along one axis of ``size`` voxels.

    n = ceil((size - patch) / step) + 1 with step = patch * (1 - overlap); the
    starts are a rounded linspace from 0 to ``size - patch``. An axis shorter than
    the patch gets the single start 0 (the caller pads).
    """
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = math.ceil((size - patch) / step) + 1
    return [int(round(s)) for s in np.linspace(0, size - patch, n)]


def sliding_windows(
    shape: Sequence[int], patch_size: int | Sequence[int], overlap: float = 0.0
) -> list[Window]:
    """Windows of ``patch_size`` that together cover every voxel of a 3-D ``shape``.

    Parameters
    ----------
    shape : 3 ints
        Volume shape (Z, Y, X) in voxels; extra trailing entries (channels) are ignored.
    patch_size : int or 3 ints
        Window size in voxels.
    overlap : float in [0, 1)
        Fraction of the patch shared by neighbouring windows (0.5 = half a patch).

    Returns
    -------
    list of (slice, slice, slice)
        In z-major order. Along an axis shorter than the patch the window is
        ``slice(0, patch)`` and reaches past the volume: pad it first
        (:func:`pad_to_patch`) or clip it.
    """
    patch = as_patch_shape(patch_size)
    overlap = check_overlap(overlap)
    if len(shape) < 3:
        raise ValueError(f"shape must have 3 entries (Z, Y, X), got {tuple(shape)}")
    starts = [window_starts(int(s), p, overlap) for s, p in zip(shape[:3], patch, strict=True)]
    return [
        (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        for z in starts[0]
        for y in starts[1]
        for x in starts[2]
    ]


def pad_to_patch(
    volume: np.ndarray, patch_size: int | Sequence[int], value: float = 0
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the spatial axes shorter than the patch, at their far end, with ``value``.

    Returns ``(padded, crop)``; ``padded[crop]`` is exactly ``volume`` again
    (:func:`crop_to_shape` does that). Axes already long enough are untouched and,
    if none is short, ``volume`` itself is returned without a copy.
    """
    volume = check_volume(volume)
    patch = as_patch_shape(patch_size)
    pad = [(0, max(0, p - s)) for s, p in zip(volume.shape[:3], patch, strict=True)]
    crop = tuple(slice(0, s) for s in volume.shape)
    if not any(after for _, after in pad):
        return volume, crop
    pad += [(0, 0)] * (volume.ndim - 3)
    return np.pad(volume, pad, mode="constant", constant_values=value), crop


def crop_to_shape(volume: np.ndarray, crop: tuple[slice, ...]) -> np.ndarray:
    """Exact inverse of :func:`pad_to_patch`: ``crop_to_shape(*pad_to_patch(v, p)) == v``."""
    return volume[crop]


def extract_patches(
    volume: np.ndarray, patch_size: int | Sequence[int] = 64, overlap: float = 0.0
) -> tuple[np.ndarray, list[Window]]:
    """Cut ``volume`` into (overlapping) patches: the teaching version, all in memory.

    Returns ``(patches, windows)``: ``patches`` has shape (N, pz, py, px[, C]) and the
    volume's dtype; ``windows[i]`` says where patch ``i`` came from in the volume
    padded by :func:`pad_to_patch`. With ``overlap=0`` and shapes divisible by the
    patch it equals ``patchify.patchify(volume, patch, step=patch)`` reshaped to N.
    For large volumes use :func:`helpers.inference.predict_volume`, which streams.
    """
    padded, _ = pad_to_patch(volume, patch_size)
    windows = sliding_windows(padded.shape, patch_size, overlap)
    patches = np.stack([padded[w] for w in windows])
    return patches, windows


def gaussian_weights(patch_size: int | Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Separable Gaussian importance map of shape ``patch_size``, float32, max 1.

    sigma = patch * sigma_scale per axis, centred at (p - 1) / 2 so even sizes are
    symmetric, and floored at :data:`WEIGHT_FLOOR` so every weight is > 0.
    """
    patch = as_patch_shape(patch_size)
    axes = []
    for p in patch:
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2
        axes.append(np.exp(-0.5 * (x / (p * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w /= w.max()
    return np.maximum(w, WEIGHT_FLOOR).astype(np.float32)


def blend_weights(patch_size: int | Sequence[int], blend: Blend) -> np.ndarray | None:
    """The single-channel weight map for ``blend``; None for ``"none"`` (no blending)."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if blend == "gaussian":
        return gaussian_weights(patch_size)
    if blend == "average":
        return np.ones(as_patch_shape(patch_size), dtype=np.float32)
    return None


def clip_window(window: Window, shape: Sequence[int]) -> tuple[Window, Window]:
    """Split a window into (the part inside ``shape``, the same part in patch coordinates)."""
    inside = tuple(slice(w.start, min(w.stop, s)) for w, s in zip(window, shape, strict=False))
    local = tuple(slice(0, i.stop - i.start) for i in inside)
    return inside, local  # type: ignore[return-value]


def stitch_patches(
    patches: np.ndarray,
    windows: Sequence[Window],
    shape: Sequence[int],
    blend: Blend = "gaussian",
) -> np.ndarray:
    """Reassemble ``patches`` (N, pz, py, px[, C]) into a volume of ``shape`` (Z, Y, X).

    Each patch is added with its blend weight into an accumulator and the sum is
    divided by the summed weights; ``blend="none"`` copies patches in order so the
    last one covers each voxel (no blending, for comparison). Windows reaching past
    ``shape`` (from padding) are clipped. Returns float32 (Z, Y, X[, C]).
    """
    patches = np.asarray(patches)
    if patches.ndim not in (4, 5) or len(patches) != len(windows):
        raise ValueError(
            f"patches must be (N, pz, py, px[, C]) with N = len(windows) = {len(windows)}, "
            f"got shape {patches.shape}"
        )
    weights = blend_weights(patches.shape[1:4], blend)
    spatial = tuple(int(s) for s in shape[:3])
    out = np.zeros(spatial + patches.shape[4:], dtype=np.float32)
    if weights is None:
        for patch, window in zip(patches, windows, strict=True):
            inside, local = clip_window(window, spatial)
            out[inside] = patch[local]
        return out
    wsum = np.zeros(spatial, dtype=np.float32)
    extra = (None,) * (patches.ndim - 4)
    for patch, window in zip(patches, windows, strict=True):
        inside, local = clip_window(window, spatial)
        w = weights[local]
        out[inside] += patch[local] * w[(...,) + extra]
        wsum[inside] += w
    out /= wsum[(...,) + extra]
    return out


def patch_memory_bytes(
    shape: Sequence[int],
    patch_size: int | Sequence[int] = 64,
    overlap: float = 0.5,
    n_classes: int = 1,
    itemsize: int = 4,
) -> tuple[int, int]:
    """(number of windows, bytes) to hold every patch of ``shape`` at once with ``n_classes`` channels.

    The arithmetic behind cutting all patches in advance: 512^3 at 50 % overlap
    gives 3,375 patches of 64^3, about 14 GB of float32 for 4 classes.
    """
    patch = as_patch_shape(patch_size)
    n = len(sliding_windows(shape, patch, overlap))
    return n, n * int(np.prod(patch)) * n_classes * itemsize


def distance_to_window_border(
    shape: tuple[int, ...], patch_size: int | Sequence[int], overlap: float = 0.0
) -> np.ndarray:
    """Per voxel of ``shape`` (Z, Y, X): voxels to the nearest inner window border, int32.

    Borders are the starts and ends of the windows of :func:`sliding_windows`
    that fall inside the volume; a voxel touching one has distance 0.
    """
    per_axis = []
    for size, patch in zip(shape[:3], as_patch_shape(patch_size), strict=True):
        starts = window_starts(size, patch, overlap)
        borders = {b for s in starts for b in (s, s + patch) if 0 < b < size}
        idx = np.arange(size)
        if borders:
            b = np.array(sorted(borders))
            d = np.minimum(np.abs(idx[:, None] - b[None, :]), np.abs(b[None, :] - 1 - idx[:, None]))
            per_axis.append(d.min(axis=1))
        else:
            per_axis.append(np.full(size, size, dtype=np.int64))
    dz, dy, dx = per_axis
    return np.minimum(np.minimum(dz[:, None, None], dy[None, :, None]), dx[None, None, :]).astype(np.int32)
