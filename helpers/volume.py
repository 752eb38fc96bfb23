"""The volume type every helper shares: an array (Z, Y, X[, C]) with its NIfTI-style affine; no I/O.

Axis convention (the only place it is stated): ``Volume.array`` is indexed ``[z, y, x]`` or
``[z, y, x, c]``, slices first. ``Volume.affine`` is the NIfTI 4x4 voxel-to-world matrix: it maps
``(x, y, z, 1)`` (column, row, slice) to RAS+ millimetres, as nibabel reports it for the same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy", ".npz")
TIFF_SUFFIXES = (".tif", ".tiff")
SUPPORTED = (*NIFTI_SUFFIXES, *NUMPY_SUFFIXES, *TIFF_SUFFIXES, "a DICOM folder or list of files")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(ValueError):
    """A volume file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


@dataclass
class Volume:
    """A volume and its geometry.

    Attributes
    ----------
    array : ndarray, (Z, Y, X) or (Z, Y, X, C)
    affine : ndarray, (4, 4) float64
        Maps (x, y, z, 1) voxel indices to world RAS+ coordinates in mm (TIFF: its
        resolution converted to mm from the file's unit, see :func:`load_volume`).
    source_format : str
        "nifti", "numpy", "dicom" or "tiff".
    path : str or None
    meta : dict
        Format details worth keeping (NIfTI form codes, DICOM series UID, ...).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    source_format: str = "numpy"
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (Z, Y, X) in world units (mm), from the affine's columns."""
        dx, dy, dz = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(dz), float(dy), float(dx)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def volume_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
