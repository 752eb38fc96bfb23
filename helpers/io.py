"""Reading and writing volumes with their geometry: NIfTI, NumPy, DICOM series and TIFF stacks.

Axis convention (the only place it is converted): ``Volume.array`` is indexed
``[z, y, x]`` or ``[z, y, x, c]``, slices first. ``Volume.affine`` is the NIfTI
4x4 voxel-to-world matrix: it maps ``(x, y, z, 1)`` (note the order: column,
row, slice) to RAS+ millimetres, exactly as nibabel would report it for the
same file. So ``affine @ [x, y, z, 1]`` is the world position of ``array[z, y, x]``.

- NIfTI stores (i, j, k) = (x, y, z): the array is transposed on load and save.
- DICOM stores slices of (rows, columns) = (y, x) in LPS+: slices are ordered by
  ImagePositionPatient projected on the slice normal and the affine is flipped to RAS+.
- TIFF and NumPy are stored as (Z, Y, X[, C]) already.

Every write goes to a temporary file in the target folder, then is renamed
(:func:`atomic_path`, which the other helpers use too), so an interrupted save
never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
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


def spacing_affine(spacing: Sequence[float]) -> np.ndarray:
    """Diagonal affine for voxel ``spacing`` given in (Z, Y, X) order."""
    dz, dy, dx = (float(s) for s in spacing)
    return np.diag([dx, dy, dz, 1.0])


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


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
        return _load_dicom([Path(p) for p in path], series_uid, where=f"DICOM list of {len(path)}")
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise VolumeError(
            None,
            f"path must be a file, a folder or a list of DICOM files, got {type(path).__name__} {path!r}",
        )
    path = Path(path)
    _check_exists(path)
    remove_stale_temporaries(path if path.is_dir() else path.parent)
    if path.is_dir():
        try:
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        except PermissionError:
            raise VolumeError(path, "permission denied") from None
        return _load_dicom(files, series_uid, where=path)
    suffix = _suffix(path)
    try:
        with open(path, "rb"):  # readers such as nibabel wrap a refusal into "not an image"
            pass
    except PermissionError:
        raise VolumeError(path, "permission denied") from None
    try:
        if suffix in NIFTI_SUFFIXES:
            vol = _load_nifti(path)
        elif suffix in NUMPY_SUFFIXES:
            vol = _load_numpy(path)
        elif suffix in TIFF_SUFFIXES:
            vol = _load_tiff(path)
        elif suffix == ".dcm":
            return _load_dicom([path], series_uid, where=path)
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


def _check_exists(path: Path) -> None:
    """Raise VolumeError with the real reason when ``path`` cannot be opened."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VolumeError(path, "is a symbolic link loop") from None
        if err.errno in (errno.EACCES, errno.EPERM):
            raise VolumeError(path, "permission denied") from None
        if path.is_symlink():
            raise VolumeError(path, f"is a broken symbolic link (to {os.readlink(path)})") from None
        raise VolumeError(path, "no such file or directory") from None


def _load_nifti(path: Path) -> Volume:
    import nibabel as nib

    img = nib.load(str(path))
    hdr = img.header
    shape = tuple(int(s) for s in hdr.get_data_shape())
    if 0 in shape:
        raise VolumeError(path, f"is empty: its header declares shape {shape}")
    dtype = hdr.get_data_dtype()
    offset = int(img.dataobj.offset)  # the header may say 0 where the data follows it at 352
    needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if _suffix(path) == ".nii.gz":
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
    if _suffix(path) == ".nii.gz":
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


def _check_numpy_header(path: Path) -> None:
    """Refuse an empty file, or a .npy with an unsupported header, pickled objects or too little data."""
    if path.stat().st_size == 0:
        raise VolumeError(path, "is an empty file (0 bytes): an interrupted copy or write?")
    with open(path, "rb") as f:
        magic = f.read(6)
        if magic.startswith(b"\x93NUMPY"):
            f.seek(0)
            version = np.lib.format.read_magic(f)
            reader = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if reader is None:
                raise VolumeError(path, f"uses .npy format version {version}, which is not supported")
            shape, _, dtype = reader(f)
            needed = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if dtype.hasobject:
                raise VolumeError(
                    path, "holds pickled Python objects, which are never loaded (allow_pickle=False)"
                )
            if path.stat().st_size < needed:
                raise VolumeError(
                    path,
                    f"header declares shape {shape} of {dtype}, more than the file holds: "
                    "corrupt or truncated file",
                )
        elif not magic.startswith(b"PK"):
            raise VolumeError(path, "is not a NumPy .npy or .npz file (no NumPy header)")


def _load_numpy(path: Path) -> Volume:
    _check_numpy_header(path)
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return Volume(loaded, np.eye(4), "numpy")
    with loaded as npz:
        keys = list(npz.keys())
        key = "array" if "array" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise VolumeError(path, f"holds arrays {keys}; expected one array or one named 'array'")
        array = npz[key]
        affine = npz["affine"] if "affine" in keys else np.eye(4)
    return Volume(array, check_affine(affine, path), "numpy")


_TIFF_AXES = {"Z": "Z", "Q": "Z", "I": "Z", "T": "Z", "Y": "Y", "X": "X", "C": "C", "S": "C"}


#: Millimetres per unit, for ImageJ's ``unit`` and TIFF's ResolutionUnit names.
_MM_PER_UNIT = {
    "mm": 1.0, "millimeter": 1.0, "millimetre": 1.0,
    "cm": 10.0, "centimeter": 10.0, "centimetre": 10.0,
    "m": 1000.0, "meter": 1000.0, "metre": 1000.0,
    "um": 1e-3, "µm": 1e-3, "μm": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3,
    "micrometre": 1e-3, "\\u00b5m": 1e-3,
    "nm": 1e-6, "nanometer": 1e-6, "nanometre": 1e-6,
    "inch": 25.4, "in": 25.4,
}  # fmt: skip
#: TIFF's ResolutionUnit tag: 1 none, 2 inch (the default when absent), 3 centimetre.
_TIFF_RESOLUTION_UNITS = {1: None, 2: "inch", 3: "cm"}


def _tiff_affine(tif: Any, path: Path) -> np.ndarray:
    """A TIFF's affine in mm: stored by :func:`save_volume`, else from its resolution tags.

    XResolution and YResolution are pixels per unit: ImageJ's ``unit`` where ImageJ
    wrote one (with its ``spacing`` between slices), else the ResolutionUnit tag (inch
    when absent, as the TIFF standard says, or centimetre). A file with resolution but
    no physical unit, or a unit this reader does not know, loads with its numbers taken
    as millimetres and a warning that names the file and that assumption.
    """
    shaped = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    if "affine" in shaped:
        return check_affine(shaped["affine"], path)
    imagej = tif.imagej_metadata or {}
    tags = tif.pages.first.tags
    xres, yres = tags.get("XResolution"), tags.get("YResolution")
    if xres is None and yres is None and "spacing" not in imagej:
        return np.eye(4)  # no geometry at all: voxel units, nothing to warn about

    def size(tag: Any) -> float:
        num, den = tag.value if tag is not None else (1, 1)
        return den / num if num else 1.0

    if "unit" in imagej:
        unit = str(imagej["unit"]).strip()
    else:
        code = tags.get("ResolutionUnit")
        unit = _TIFF_RESOLUTION_UNITS.get(int(code.value) if code is not None else 2, "?")
    scale = _MM_PER_UNIT.get(unit.lower()) if unit else None
    if scale is None:
        warnings.warn(
            f"{path}: {'no physical unit' if not unit else f'unknown resolution unit {unit!r}'}; "
            "its voxel sizes are taken as millimetres",
            stacklevel=4,
        )
        scale = 1.0
    spacing = (float(imagej.get("spacing", 1.0)), size(yres), size(xres))
    return spacing_affine([s * scale for s in spacing])


def _load_tiff(path: Path) -> Volume:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        affine = _tiff_affine(tif, path)
    mapped = [_TIFF_AXES.get(a, "?") for a in axes]
    for i in reversed(range(len(mapped))):  # drop singleton axes we cannot place
        if data.shape[i] == 1 and (mapped[i] == "?" or mapped.count(mapped[i]) > 1):
            data = data.squeeze(i)
            del mapped[i]
    if "?" in mapped or len(set(mapped)) != len(mapped) or not {"Y", "X"} <= set(mapped):
        raise VolumeError(path, f"TIFF axes {axes!r} with shape {data.shape} are not a 3-D stack")
    if "Z" not in mapped:
        raise VolumeError(
            path,
            f"is a single 2-D image (axes {axes!r}, shape {data.shape}), not a stack of slices; "
            "if its colour samples are slices, write each slice as a page (photometric='minisblack')",
        )
    order = [mapped.index(a) for a in "ZYXC" if a in mapped]
    data = np.transpose(data, order)
    return Volume(data, affine, "tiff", meta={"axes": axes})


def _read_dicom_headers(files: Iterable[Path]) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except InvalidDicomError:
            continue  # not a DICOM file (a README, a DICOMDIR index...)
        except PermissionError:
            raise VolumeError(f, "permission denied") from None
        except Exception as err:
            raise VolumeError(f, f"corrupt or truncated DICOM file ({err})") from err
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(
                f,
                f"is a multi-frame DICOM ({int(ds.NumberOfFrames)} frames in one file), which this loader "
                "does not read; convert it to NIfTI (for example with dcm2niix)",
            )
        if "PixelData" in ds:
            out.append((f, ds))
        elif "Image Storage" in _sop_class_name(ds):
            raise VolumeError(f, "is a DICOM image without its pixel data: truncated or corrupt")
    return out


def _sop_class_name(ds: Any) -> str:
    """The SOP class name (e.g. "CT Image Storage"), from the file meta a truncated file still has."""
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "MediaStorageSOPClassUID", None) or getattr(ds, "SOPClassUID", None)
    return str(getattr(uid, "name", "")) if uid is not None else ""


def _load_dicom(files: list[Path], series_uid: str | None, where: Any) -> Volume:
    for f in files:
        _check_exists(f)
    datasets = _read_dicom_headers(files)
    if not datasets:
        raise VolumeError(where, "contains no DICOM image files (empty DICOM folder?)")
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in datasets:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "unknown")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise VolumeError(where, f"has no series {series_uid!r}; it has {sorted(series)}")
        chosen = series[series_uid]
    elif len(series) > 1:
        listing = "; ".join(
            f"{uid} ({getattr(items[0][1], 'SeriesDescription', '') or 'no description'}, {len(items)} files)"
            for uid, items in series.items()
        )
        raise VolumeError(
            where,
            f"mixes {len(series)} DICOM series: {listing}. Pick one with load_volume(path, series_uid=...)",
        )
    else:
        chosen = next(iter(series.values()))
    if len(chosen) < 2:
        raise VolumeError(where, "holds a single slice: 2-D data, a 3-D volume is needed")

    try:
        iop = np.array(chosen[0][1].ImageOrientationPatient, dtype=np.float64)
        row_cos, col_cos = iop[:3], iop[3:]
        normal = np.cross(row_cos, col_cos)
        if iop.shape != (6,) or not np.isfinite(iop).all() or np.linalg.norm(normal) < 1e-3:
            raise VolumeError(
                chosen[0][0],
                f"has a degenerate orientation: ImageOrientationPatient {iop.tolist()} must hold two "
                "non-zero, non-parallel direction vectors (row, column)",
            )
        positions = np.array([ds.ImagePositionPatient for _, ds in chosen], dtype=np.float64)
        row_spacing, col_spacing = (float(v) for v in chosen[0][1].PixelSpacing)
    except AttributeError as err:
        raise VolumeError(where, f"DICOM series lacks geometry ({err})") from err
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    proj, positions = proj[order], positions[order]
    chosen = [chosen[i] for i in order]
    gaps = np.diff(proj)
    if np.any(np.abs(gaps) < 1e-4):
        i = int(np.argmin(np.abs(gaps)))
        raise VolumeError(
            where,
            f"duplicated slice position {proj[i]:.4f} mm in {chosen[i][0].name} and {chosen[i + 1][0].name}",
        )
    if np.ptp(gaps) > 0.01 * np.median(gaps):
        warnings.warn(
            f"{where}: uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm); "
            "the affine uses the mean spacing",
            stacklevel=3,
        )
    slices = []
    for f, ds in chosen:
        try:
            pixels = ds.pixel_array
        except Exception as err:
            raise VolumeError(f, f"cannot decode pixel data ({err})") from err
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            pixels = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        slices.append(pixels)
    _check_slice_shapes(slices, [f for f, _ in chosen])
    array = np.stack(slices)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    lps[:3, 3] = positions[0]
    meta = {"series_uid": str(getattr(chosen[0][1], "SeriesInstanceUID", ""))}
    array, lps = _untilt(array, lps, normal, where)
    return Volume(array, LPS_TO_RAS @ lps, "dicom", path=str(where), meta=meta)


def _untilt(
    array: np.ndarray, lps: np.ndarray, normal: np.ndarray, where: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a tilted (sheared) series onto the orthogonal grid of its slices, as dcm2niix does.

    With a gantry tilt each slice is offset in its own plane from the one before, so
    the voxel grid is sheared: no NIfTI qform can hold it, and viewers that read the
    qform (ITK, 3D Slicer, ITK-SNAP) would place the scan, and every segmentation
    saved with its affine, in the wrong spot. Each slice is shifted back in plane by
    linear interpolation (zero outside the field of view) and the affine's slice axis
    set along the slice normal; a warning says so. An untilted series is returned as is.
    """
    step = lps[:3, 2]
    normal = normal / np.linalg.norm(normal)
    drift = step - (step @ normal) * normal  # in-plane offset from one slice to the next, mm
    pixel = np.linalg.norm(lps[:3, :2], axis=0)  # (column, row) spacing
    offsets = drift @ (lps[:3, :2] / pixel**2)  # per slice, in (x, y) voxels
    if np.abs(offsets * (len(array) - 1)).max() < 0.01:
        return array, lps
    from scipy import ndimage

    fill = float(array.min())
    out = np.empty(array.shape, np.float32)
    for k, plane in enumerate(array):
        ndimage.shift(plane.astype(np.float32), (k * offsets[1], k * offsets[0]), out[k], order=1, cval=fill)
    tilt = np.degrees(np.arccos(min(1.0, abs(step @ normal) / np.linalg.norm(step))))
    warnings.warn(
        f"{where}: slices are tilted by {tilt:.2f} degrees (gantry tilt); resampled onto an orthogonal "
        "grid, as dcm2niix does",
        stacklevel=4,
    )
    lps = lps.copy()
    lps[:3, 2] = (step @ normal) * normal
    return out, lps


def _check_slice_shapes(slices: Sequence[np.ndarray], files: Sequence[Path]) -> None:
    """Refuse a series whose slices differ in size, naming the first file off the common size."""
    shapes = [s.shape for s in slices]
    common = max(set(shapes), key=shapes.count)
    odd = next((i for i, s in enumerate(shapes) if s != common), None)
    if odd is not None:
        raise VolumeError(
            files[odd],
            f"slice of {shapes[odd][0]} x {shapes[odd][1]} pixels in a series of {common[0]} x {common[1]} "
            f"slices ({shapes.count(common)} of {len(shapes)}): the series mixes image sizes",
        )


# ---------------------------------------------------------------------------- saving


#: Test hook: seconds to sleep between writing a temporary file and renaming it, which
#: widens the window in which a kill leaves a temporary file behind (fault-injection tests).
SLOW_WRITE_ENV = "HELPERS_SLOW_WRITE_S"
_MULTI_SUFFIXES = (".nii.gz", ".weights.h5")


def _temp_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in _MULTI_SUFFIXES if name.endswith(s)), path.suffix)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


#: A temporary of :func:`atomic_path`: ``.<name>.<pid>.<random>.partial<suffix>``.
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.partial")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that crashed :func:`atomic_path` writers left in ``folder``.

    A temporary file is named ``.<name>.<pid>.<random>.partial<suffix>``; it is stale
    when process ``pid`` no longer runs. Files of live processes are left alone, and a
    folder that cannot be listed or written is left as it is. Returns the paths removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or ".partial" not in entry.name:
            continue
        match = _PARTIAL.match(entry.name)
        if match is None:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    If the block raises, the temporary file is removed and ``path`` is untouched, so
    an interrupted write never leaves a truncated file. The temporary name keeps the
    extension (``.nii.gz`` and ``.weights.h5`` included) so writers that look at it
    still work, and carries the writer's PID, so temporaries left by a killed process
    are removed on the next write to any file of the same folder
    (:func:`remove_stale_temporaries`). The final file gets the
    usual permissions (0666 less the umask).

    Raises
    ------
    VolumeError
        The folder does not exist or is not writable (the message names ``path``).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise VolumeError(path, f"folder {path.parent} does not exist")
    remove_stale_temporaries(path.parent)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=f".partial{_temp_suffix(path)}", dir=path.parent
        )
    except PermissionError as err:
        raise VolumeError(path, f"cannot write into folder {path.parent}: permission denied") from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        delay = float(os.environ.get(SLOW_WRITE_ENV, "0") or 0)
        if delay > 0:
            import time

            time.sleep(delay)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


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
    suffix = _suffix(path)
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
            _save_nifti(tmp, array, affine, like)
        elif suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez_compressed(f, array=array, affine=affine)
        elif suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)
        else:
            _save_tiff(tmp, array, affine)
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


def _save_nifti(tmp: Path, array: np.ndarray, affine: np.ndarray, like: Volume | None) -> None:
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


def _save_tiff(tmp: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import tifffile

    dx, dy, _ = np.linalg.norm(affine[:3, :3], axis=0)
    tifffile.imwrite(
        tmp,
        array,
        photometric="minisblack",
        planarconfig="contig" if array.ndim == 4 else None,
        resolution=(10.0 / dx, 10.0 / dy),  # pixels per centimetre, for readers that ignore the affine
        resolutionunit="CENTIMETER",
        metadata={"axes": "ZYXC"[: array.ndim], "affine": affine.tolist()},
    )


# ------------------------------------------------------------------- validation


_CHUNK = 8


def release_pages(array: Any) -> None:
    """Drop the pages of memory map ``array`` (or a view of one) from this process's resident memory.

    The data stays on disk and in the kernel's page cache; the next read maps it back
    in, at the cost of a page fault. Anything that is not a memory map is left alone,
    as is every array on a system without ``madvise`` (Windows).
    """
    handle = getattr(array, "_mmap", None)
    if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            handle.madvise(mmap.MADV_DONTNEED)


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


def write_dicom_series(
    folder: str | os.PathLike[str],
    array: np.ndarray,
    affine: np.ndarray,
    slope: float | None = None,
    intercept: float | None = None,
    series_uid: str | None = None,
    description: str = "course demo",
) -> list[Path]:
    """Write ``array`` (Z, Y, X) as a minimal uncompressed CT DICOM series, one file per slice.

    A teaching and testing utility (real scanners write far richer headers).
    Stored values are ``round((array - intercept) / slope)`` as int16. Without
    ``slope`` and ``intercept``, integer data that fits int16 is stored as it is and
    anything else is scaled to use the int16 range, so the loaded values differ from
    ``array`` by at most ``slope / 2``. Values that the given slope and intercept
    cannot store in int16 raise VolumeError instead of wrapping. The affine must map
    (x, y, z) to RAS+ mm with in-plane axes orthogonal. Files are named by a random
    UID, not by slice order, as on many PACS exports.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(affine, dtype=np.float64)
    col_spacing, row_spacing = np.linalg.norm(lps[:3, :2], axis=0)
    row_cos, col_cos = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
    values = np.asarray(array, np.float64)
    lo, hi = float(values.min()), float(values.max())
    if slope is None and intercept is None:
        integral = bool(np.all(values == np.round(values)))
        if integral and -32768 <= lo and hi <= 32767:
            slope, intercept = 1.0, 0.0
        else:
            intercept = (lo + hi) / 2
            slope = max(hi - lo, 1e-12) / 65000.0
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    scaled = np.round((values - intercept) / slope)
    if scaled.min() < -32768 or scaled.max() > 32767:
        raise VolumeError(
            folder,
            f"values {lo:g}..{hi:g} do not fit int16 with slope {slope:g} and intercept {intercept:g}; "
            "leave slope and intercept out to have them chosen",
        )
    stored = scaled.astype(np.int16)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    paths = []
    for k, plane in enumerate(stored):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        ds.Modality = "CT"
        ds.InstanceNumber = len(stored) - k  # deliberately not the spatial order
        ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]]
        ds.PixelSpacing = [float(row_spacing), float(col_spacing)]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        target = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(target, enforce_file_format=True)
        paths.append(target)
    return paths


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
