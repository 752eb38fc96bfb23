"""NIfTI (``.nii``, ``.nii.gz``): read with nibabel, declared sizes checked before allocating.

NIfTI stores (i, j, k) = (x, y, z): the array is transposed on load and save.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from helpers.volume import Volume, VolumeError, volume_suffix


def load_nifti(path: Path) -> Volume:
    import nibabel as nib

    img = nib.load(str(path))
    hdr = img.header
    shape = tuple(int(s) for s in hdr.get_data_shape())
    if 0 in shape:
        raise VolumeError(path, f"is empty: its header declares shape {shape}")
    dtype = hdr.get_data_dtype()
    offset = int(img.dataobj.offset)  # the header may say 0 where the data follows it at 352
    needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if volume_suffix(path) == ".nii.gz":
        raw = bytearray()
        for chunk in _gunzip_chunks(path, needed):  # grows only as real data arrives
            raw += chunk
        _check_declared_size(path, shape, dtype, needed, len(raw), "decompresses to")
        count = (needed - offset) // dtype.itemsize
        data = np.frombuffer(raw, dtype, count=count, offset=offset).reshape(shape, order="F")
    else:
        _check_declared_size(path, shape, dtype, needed, path.stat().st_size, "holds")
        data = np.asanyarray(img.dataobj.get_unscaled())
    data = _apply_scaling(data, float(img.dataobj.slope), float(img.dataobj.inter))
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim >= 3:
        data = np.ascontiguousarray(np.swapaxes(data, 0, 2))
    meta = {"qform_code": int(hdr["qform_code"]), "sform_code": int(hdr["sform_code"])}
    return Volume(data, np.asarray(img.affine, dtype=np.float64), "nifti", meta=meta)


#: Bytes of decompressed output per step when reading a ``.nii.gz``.
_GZIP_STEP = 1 << 24


def _gunzip_chunks(path: Path, needed: int) -> Iterator[bytes]:
    """The first ``needed`` decompressed bytes of a gzip file, in chunks of at most ``_GZIP_STEP``.

    Stops early where the file holds fewer. Decompressing step by step means a header
    that claims terabytes costs no more memory than the file really holds. Concatenated
    gzip members and zero padding are read as ``gzip`` reads them.
    """
    done = 0
    pending = b""
    inflate = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while done < needed:
            if inflate.eof:  # another member may follow, after optional zero padding
                pending = pending.lstrip(b"\0")
                if pending:
                    inflate = zlib.decompressobj(wbits=31)
            if not pending:
                pending = f.read(1 << 20)
                if not pending:
                    return
                continue
            chunk = inflate.decompress(pending, min(_GZIP_STEP, needed - done))
            pending = inflate.unconsumed_tail or inflate.unused_data
            done += len(chunk)
            yield chunk


def check_nifti_size(path: str | os.PathLike[str], img: Any) -> None:
    """Refuse a NIfTI whose header (nibabel ``img``) claims more voxel data than the file holds.

    A ``.nii`` is compared with its size on disk; a ``.nii.gz`` is decompressed step by
    step, in bounded memory, until the data declared has arrived or the file ends (one
    extra pass: use it where the data is then read piece by piece).

    Raises
    ------
    VolumeError
        The file is shorter than its header declares; the message gives both sizes.
    """
    path = Path(path)
    hdr = img.header
    shape = tuple(int(s) for s in hdr.get_data_shape())
    dtype = hdr.get_data_dtype()
    needed = int(img.dataobj.offset) + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if volume_suffix(path) == ".nii.gz":
        size, verb = sum(len(c) for c in _gunzip_chunks(path, needed)), "decompresses to"
    else:
        size, verb = path.stat().st_size, "holds"
    _check_declared_size(path, shape, dtype, needed, size, verb)


def _check_declared_size(
    path: Path, shape: tuple[int, ...], dtype: Any, needed: int, size: int, verb: str
) -> None:
    """Refuse a NIfTI whose header claims more bytes (``needed``) than the file ``verb`` (``size``)."""
    if size < needed:
        raise VolumeError(
            path,
            f"header declares shape {shape} of {dtype} ({needed:,} bytes with the header) "
            f"but the file {verb} only {size:,} bytes: corrupt or truncated file",
        )


def _apply_scaling(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``raw`` in native byte order, times ``slope`` plus ``inter`` as float32 unless they are 1 and 0.

    nibabel would scale to float64: twice the memory, for a precision no scan has.
    """
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if slope == 1.0 and inter == 0.0:
        return raw
    out = raw.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if inter != 0.0:
        out += np.float32(inter)
    return out


def save_nifti(tmp: Path, array: np.ndarray, affine: np.ndarray, like: Volume | None) -> None:
    import nibabel as nib

    data = np.swapaxes(array, 0, 2)
    img = nib.Nifti1Image(data, affine)
    meta = like.meta if like is not None else {}
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if np.abs(columns.T @ columns - np.eye(3)).max() < 1e-4:
        img.set_qform(affine, code=int(meta.get("qform_code") or 1))
    else:  # a quaternion holds no shear: an approximate qform would disagree with the sform
        img.set_qform(None, code=0)
    img.set_sform(affine, code=int(meta.get("sform_code") or 1))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp))
