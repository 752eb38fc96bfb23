"""Affine arithmetic, a leaf as nibabel's ``affines``: an affine from a spacing, an affine of a crop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def spacing_affine(spacing: Sequence[float]) -> np.ndarray:
    """Diagonal affine for voxel ``spacing`` given in (Z, Y, X) order."""
    dz, dy, dx = (float(s) for s in spacing)
    return np.diag([dx, dy, dz, 1.0])


def crop_affine(affine: np.ndarray, region: Sequence[slice]) -> np.ndarray:
    """Affine of ``array[region]`` (slices in (Z, Y, X) order, steps of 1) given the full array's.

    Use it when saving a sub-volume, such as the held-out slab, so it still overlays the scan.
    """
    offset = [0, 0, 0]
    for axis, s in enumerate(region[:3]):
        if s.step not in (None, 1):
            raise ValueError(f"crop_affine needs unit steps, got {s} on axis {axis}")
        offset[axis] = s.start or 0
    shift = np.eye(4)
    shift[:3, 3] = [offset[2], offset[1], offset[0]]  # (z, y, x) -> (x, y, z)
    return np.asarray(affine, dtype=np.float64) @ shift
