"""Reading and writing volumes: :func:`load_volume` and :func:`save_volume` pick the format by suffix.

Each format has its module in :mod:`helpers.formats` (NIfTI, NumPy, TIFF, DICOM), as nibabel keeps one
module per format. The volume type and its axis convention are in :mod:`helpers.volume`; validators in
:mod:`helpers.checks`; atomic writes in :mod:`helpers.files`; memory-map pages in :mod:`helpers.memory`;
affine arithmetic in :mod:`helpers.affines`. The names that used to live here are still importable
from here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Importable from here as before the split (notebooks, tests and older code use these paths).
from helpers.affines import crop_affine, spacing_affine  # noqa: E402, F401
from helpers.checks import check_affine, check_finite, check_image, check_labels, check_volume  # noqa: E402, F401
from helpers.files import (  # noqa: E402, F401
    SLOW_WRITE_ENV,
    atomic_path,
    check_exists,
    remove_stale_temporaries,
    write_text_atomic,
)
from helpers.formats.dicom import load_dicom, write_dicom_series  # noqa: E402, F401
from helpers.formats.nifti import check_nifti_size, load_nifti, save_nifti  # noqa: E402, F401
from helpers.formats.numpy_files import check_numpy_header, load_numpy  # noqa: E402, F401
from helpers.formats.tiff import load_tiff, save_tiff, tiff_affine  # noqa: E402, F401
from helpers.memory import release_pages  # noqa: E402, F401
from helpers.volume import (  # noqa: E402, F401
    LPS_TO_RAS,
    NIFTI_SUFFIXES,
    NUMPY_SUFFIXES,
    SUPPORTED,
    TIFF_SUFFIXES,
    Volume,
    VolumeError,
    volume_suffix,
)

# ---------------------------------------------------------------------------- loading


def load_volume(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    series_uid: str | None = None,
) -> Volume:
    """Load a volume from NIfTI, NumPy, a DICOM series or a TIFF stack.

    Parameters
    ----------
    path : path or list of paths
        ``.nii``/``.nii.gz``, ``.npy``/``.npz`` (loaded with ``allow_pickle=False``),
        ``.tif``/``.tiff`` (a multi-page stack), a folder of DICOM files, or a list
        of DICOM files.
    series_uid : str, optional
        The SeriesInstanceUID to read when a DICOM folder holds several series.

    Temporary files that a killed writer left beside ``path`` are removed first
    (:func:`remove_stale_temporaries`). A ``.nii.gz`` is decompressed step by step and
    refused as soon as it proves shorter than its header declares, so a forged header
    costs no memory; scaled NIfTI data (slope and intercept) load as float32.

    Raises
    ------
    VolumeError
        Missing path, unsupported extension, corrupt file, 2-D data, mixed or
        broken DICOM series; the message names the file.
    """
    if isinstance(path, (list, tuple)) and path:
        return load_dicom([Path(p) for p in path], series_uid, where=f"DICOM list of {len(path)}")
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise VolumeError(
            None,
            f"path must be a file, a folder or a list of DICOM files, got {type(path).__name__} {path!r}",
        )
    path = Path(path)
    check_exists(path)
    remove_stale_temporaries(path if path.is_dir() else path.parent)
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        except PermissionError:
            raise VolumeError(path, "permission denied") from None
        return load_dicom(files, series_uid, where=path)
    suffix = volume_suffix(path)
    try:
        with open(path, "rb"):  # readers such as nibabel wrap a refusal into "not an image"
            pass
    except PermissionError:
        raise VolumeError(path, "permission denied") from None
    try:
        if suffix in NIFTI_SUFFIXES:
            vol = load_nifti(path)
        elif suffix in NUMPY_SUFFIXES:
            vol = load_numpy(path)
        elif suffix in TIFF_SUFFIXES:
            vol = load_tiff(path)
        elif suffix == ".dcm":
            return load_dicom([path], series_uid, where=path)
        else:
            raise VolumeError(path, f"unsupported extension {suffix!r}; supported: {SUPPORTED}")
    except VolumeError:
        raise
    except PermissionError:
        raise VolumeError(path, "permission denied") from None
    except MemoryError:
        raise VolumeError(path, "does not fit in memory") from None
    except Exception as err:  # the readers raise many types for damaged files
        raise VolumeError(path, f"corrupt or truncated file ({type(err).__name__}: {err})") from err
    vol.path = str(path)
    check_volume(vol.array, path)
    return vol


def save_volume(
    path: str | os.PathLike[str],
    array: np.ndarray,
    like: Volume | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write ``array`` (Z, Y, X[, C]) with the geometry of ``like`` (or ``affine``).

    The extension picks the format: ``.nii``/``.nii.gz`` (affine and form codes),
    ``.npz`` (array and affine), ``.tif``/``.tiff`` (affine in the JSON
    description, spacing in the resolution tags), or ``.npy`` (the array only: it
    warns if a non-identity geometry would be lost). The dtype is kept, except
    that NIfTI and TIFF get bool as uint8, float16 as float32 and 64-bit integers
    as the smallest 32-bit type that holds them. The file is written under a
    temporary name in the same folder and renamed into place. Returns the path written.

    Raises
    ------
    VolumeError
        An empty, non-3-D, complex or non-numeric array; a singular or non-finite
        affine; an unsupported extension; a missing or unwritable folder.
    """
    path = Path(path)
    array = check_volume(np.asarray(array), path)
    if affine is None:
        affine = like.affine if like is not None else np.eye(4)
    affine = check_affine(affine, path)
    if like is not None and like.array.shape[:3] != array.shape[:3]:
        raise VolumeError(
            path, f"array shape {array.shape[:3]} differs from the reference's {like.array.shape[:3]}"
        )
    suffix = volume_suffix(path)
    if suffix not in (*NIFTI_SUFFIXES, *NUMPY_SUFFIXES, *TIFF_SUFFIXES):
        raise VolumeError(path, f"unsupported extension {suffix!r} for saving")
    if not path.parent.is_dir():
        raise VolumeError(path, f"folder {path.parent} does not exist")
    if suffix == ".npy" and not np.allclose(affine, np.eye(4)):
        warnings.warn(
            f"{path}: .npy keeps no geometry; save as .npz or .nii.gz to keep the affine",
            stacklevel=2,
        )
    if suffix in (*NIFTI_SUFFIXES, *TIFF_SUFFIXES):
        array = _portable_dtype(array, path)
    with atomic_path(path) as tmp:
        if suffix in NIFTI_SUFFIXES:
            save_nifti(tmp, array, affine, like)
        elif suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez_compressed(f, array=array, affine=affine)
        elif suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)
        else:
            save_tiff(tmp, array, affine)
    return path


def _portable_dtype(array: np.ndarray, path: Path) -> np.ndarray:
    """Convert dtypes that NIfTI and TIFF readers handle badly into ones they handle, losslessly.

    bool becomes uint8 and float16 becomes float32; 64-bit integers become the
    smallest 32-bit type that holds the values, or VolumeError if none does.
    """
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        lo, hi = int(array.min()), int(array.max())
        for candidate in (np.uint8, np.int16, np.int32, np.uint32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return array.astype(candidate)
        raise VolumeError(
            path, f"values {lo}..{hi} do not fit the 32-bit integers that NIfTI readers support"
        )
    return array
