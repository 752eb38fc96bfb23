"""DICOM series: slices ordered along the slice normal, LPS+ turned to RAS+, gantry tilt undone;
and a writer of series for tests and demos.

DICOM stores slices of (rows, columns) = (y, x) in LPS+.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.files import check_exists
from helpers.volume import LPS_TO_RAS, Volume, VolumeError


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


def load_dicom(files: list[Path], series_uid: str | None, where: Any) -> Volume:
    for f in files:
        check_exists(f)
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
