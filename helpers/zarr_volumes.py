"""Volumes in zarr v3 stores: chunked on disk, with their affine, for volumes beyond memory.

A 2048^3 float32 micro-CT is 32 GB: more than a laptop or a Colab session holds. Stored as
zarr, it is a folder of compressed chunks that any tool can read piece by piece
(``predict_volume`` slab by slab, :func:`helpers.distributed.predict_zarr` chunk by chunk on
Dask). The geometry travels in the array's attributes::

    {"volume": {"axes": "ZYX", "affine": [[4 x 4]], "spacing": [dz, dy, dx]}}

with the same conventions as :class:`helpers.io.Volume`: axes (Z, Y, X[, C]) and an affine
that maps (x, y, z, 1) voxel indices to world millimetres.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.checks import check_affine, check_volume
from helpers.formats.nifti import check_nifti_size
from helpers.formats.numpy_files import check_numpy_header
from helpers.formats.tiff import tiff_affine
from helpers.io import load_volume
from helpers.volume import VolumeError, volume_suffix

ATTRS_KEY = "volume"
#: Default chunk edge: a 64^3 float32 chunk is 1 MiB before compression.
DEFAULT_CHUNK = 64


def _check_chunks(chunks: int | Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(chunks, (int, np.integer)):
        chunks = (int(chunks),) * 3
    try:
        chunks = tuple(int(c) for c in chunks)
    except TypeError:
        raise ValueError(f"chunks must be an int or one int per spatial axis, got {chunks!r}") from None
    if len(chunks) != 3 or any(c < 1 for c in chunks):
        raise ValueError(f"chunks must be 3 positive ints (Z, Y, X), got {chunks!r}")
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape[:3], strict=True))
    return chunks + tuple(shape[3:])


def create_zarr_volume(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    chunks: int | Sequence[int] = DEFAULT_CHUNK,
    affine: np.ndarray | None = None,
    overwrite: bool = False,
    compress: bool = True,
) -> Any:
    """Create an empty zarr v3 volume (unsharded, so each chunk is one file) and return it open.

    Parameters
    ----------
    path : path
        A new folder, conventionally ending in ``.zarr``.
    shape : (Z, Y, X) or (Z, Y, X, C)
    dtype : NumPy dtype
    chunks : int or 3 ints
        Chunk size along (Z, Y, X) in voxels; channels, if any, stay in one chunk.
    affine : (4, 4), optional
        Voxel-to-world matrix, identity by default.
    overwrite : bool
        Replace an existing store; otherwise an existing path is an error.
    compress : bool
        zstd-compress chunks (default) or store them raw.
    """
    import zarr

    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (Z, Y, X) or (Z, Y, X, C) of positive sizes, got {shape}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise VolumeError(path, "already exists (pass overwrite=True to replace it)")
    affine = np.eye(4) if affine is None else check_affine(affine, path)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[::-1]
    attrs = {
        ATTRS_KEY: {
            "axes": "ZYX" if len(shape) == 3 else "ZYXC",
            "affine": affine.tolist(),
            "spacing": [float(s) for s in spacing],
        }
    }
    return zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=_check_chunks(chunks, shape),
        dtype=np.dtype(dtype),
        fill_value=0,
        compressors="auto" if compress else None,
        attributes=attrs,
        overwrite=overwrite,
    )


def open_zarr_volume(path: str | os.PathLike[str], mode: str = "r") -> Any:
    """Open a zarr volume (``mode`` "r" or "r+") and check that it is one: 3-D or 4-D numbers."""
    import zarr

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise VolumeError(path, "is not a zarr v3 array (no zarr.json)")
    try:
        array = zarr.open_array(str(path), mode=mode)
    except Exception as err:  # noqa: BLE001 - zarr raises many types for a broken store
        raise VolumeError(path, f"cannot be opened as a zarr array ({type(err).__name__}: {err})") from None
    check_volume(array, path)
    return array


def zarr_affine(array: Any) -> np.ndarray:
    """The (4, 4) affine stored with a zarr volume (identity if none was stored)."""
    meta = array.attrs.get(ATTRS_KEY, {})
    return check_affine(meta.get("affine", np.eye(4)), getattr(array, "store_path", "zarr volume"))


def save_zarr_volume(
    path: str | os.PathLike[str],
    array: np.ndarray,
    affine: np.ndarray | None = None,
    chunks: int | Sequence[int] = DEFAULT_CHUNK,
) -> Path:
    """Write an in-memory volume to a new zarr store, atomically (a temporary folder, then a rename)."""
    array = check_volume(array, "array")
    path = Path(path)
    with atomic_folder(path) as tmp:
        create_zarr_volume(tmp, array.shape, array.dtype, chunks, affine)[...] = array
    return path


def convert_to_zarr(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    chunks: int | Sequence[int] = DEFAULT_CHUNK,
) -> Path:
    """Copy a NIfTI, TIFF stack or ``.npy`` volume into a zarr store, one Z slab of chunks at a time.

    Only one slab (chunk depth x Y x X) is in memory at once, so the source may be larger
    than memory. The affine is kept; the store appears at ``target`` only when complete.
    Other formats (DICOM, compressed TIFF) are read whole with :func:`helpers.io.load_volume`.
    """
    source, target = Path(source), Path(target)
    shape, dtype, affine, read = _slab_reader(source)
    with atomic_folder(target) as tmp:
        out = create_zarr_volume(tmp, shape, dtype, chunks, affine)
        depth = out.chunks[0]
        for z0 in range(0, shape[0], depth):
            out[z0 : z0 + depth] = read(z0, min(z0 + depth, shape[0]))
    return target


def _slab_reader(source: Path) -> tuple[tuple[int, ...], np.dtype, np.ndarray, Any]:
    """(shape, dtype, affine, read(z0, z1) -> (Z, Y, X[, C]) slab) for ``source``."""
    suffix = volume_suffix(source)
    if suffix in (".nii", ".nii.gz") and source.is_file():
        import nibabel as nib

        img = nib.load(str(source))
        check_nifti_size(source, img)
        ijk = img.shape
        if len(ijk) != 3:
            raise VolumeError(source, f"has shape {ijk}; chunked conversion takes a 3-D NIfTI")
        shape = (ijk[2], ijk[1], ijk[0])

        def read_nifti(z0: int, z1: int) -> np.ndarray:
            return np.swapaxes(np.asanyarray(img.dataobj[:, :, z0:z1]), 0, 2)

        return shape, np.dtype(img.get_data_dtype()), np.asarray(img.affine, float), read_nifti
    if suffix == ".npy" and source.is_file():
        check_numpy_header(source)
        data = np.load(source, mmap_mode="r", allow_pickle=False)
        check_volume(data, source)
        return tuple(data.shape), data.dtype, np.eye(4), lambda z0, z1: np.asarray(data[z0:z1])
    if suffix in (".tif", ".tiff") and source.is_file():
        import tifffile

        with tifffile.TiffFile(source) as tif:
            axes, affine = tif.series[0].axes, tiff_affine(tif, source)
        try:
            data = tifffile.memmap(str(source), mode="r")
        except ValueError:  # compressed or not contiguous: read whole below
            data = None
        if data is not None and data.ndim == 3 and axes in ("ZYX", "QYX", "IYX"):
            return tuple(data.shape), data.dtype, affine, lambda z0, z1: np.asarray(data[z0:z1])
    vol = load_volume(source)
    return tuple(vol.array.shape), vol.array.dtype, vol.affine, lambda z0, z1: vol.array[z0:z1]


class atomic_folder:
    """Yields ``<target>.tmp-<pid>``; renames it to ``target`` on success, removes it on error."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        if self.target.exists():
            raise VolumeError(self.target, "already exists; remove it first or choose another name")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.tmp

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            os.replace(self.tmp, self.target)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
