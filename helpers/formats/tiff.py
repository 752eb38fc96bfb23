"""TIFF stacks, stored (Z, Y, X[, C]); the voxel size from the resolution tags or ImageJ's metadata."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from helpers.affines import spacing_affine
from helpers.checks import check_affine
from helpers.volume import Volume, VolumeError

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


def tiff_affine(tif: Any, path: Path) -> np.ndarray:
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


def load_tiff(path: Path) -> Volume:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        affine = tiff_affine(tif, path)
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


def save_tiff(tmp: Path, array: np.ndarray, affine: np.ndarray) -> None:
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
