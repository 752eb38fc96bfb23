"""The embedded data: generated and shipped volumes that need no download.

- :func:`make_sandstone` builds a synthetic micro-CT sandstone with the four phases of the classic
  sandstone 3D U-Net tutorial (pore, clay, quartz, pyrite).
- :func:`load_brain_mri` reads the real MNI152 2009a T1 template and its grey/white matter maps,
  which ship inside the nilearn package (no download).
- :func:`make_cores_dataset` writes SandstoneCores, a multi-case folder in mixed formats.

:mod:`helpers.demos` turns these into the demos' several cases.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from helpers.io import load_volume
from helpers.volume import Volume

SANDSTONE_CLASSES = ("pore", "clay", "quartz", "pyrite")
BRAIN_CLASSES = ("background/CSF", "grey matter", "white matter")
#: Mean grey value of each sandstone phase before blur, shading and noise.
SANDSTONE_LEVELS = np.array([0.12, 0.40, 0.62, 0.92], dtype=np.float32)


class EmbeddedVolume(NamedTuple):
    """An embedded volume: image float32 (Z, Y, X), labels uint8 (Z, Y, X), geometry."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    class_names: tuple[str, ...]
    name: str


def _field(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field with unit standard deviation, float32."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def make_sandstone(
    shape: Sequence[int] = (256, 256, 256),
    seed: int = 0,
    progress: bool | None = None,
    *,
    quartz_fraction: float = 0.55,
    clay_threshold: float = -0.2,
    pyrite_density: float = 6e-4,
    grain_sigma: float = 4.0,
    noise: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic micro-CT-like sandstone volume and its 4-phase label map.

    Quartz grains are a thresholded smooth random field, opened to round them;
    clay coats part of the grain surfaces inside the pores; pyrite forms small
    bright framboids. The grey image then gets partial-volume blur (Gaussian,
    sigma 1 voxel), a smooth shading field (like beam hardening) and noise, so
    a global threshold confuses thin clay with blurred quartz-pore edges, and
    learning from context has something to do.

    Parameters
    ----------
    shape : 3 ints
        (Z, Y, X) in voxels.
    seed : int
        Same seed, same volume.
    progress : bool, optional
        Show a progress bar; by default only from 8 million voxels (200³), which
        take several seconds (256³: 8.5 s on 2 cores).
    quartz_fraction, clay_threshold, pyrite_density, grain_sigma, noise : float, keyword-only
        The rock's statistics: the share of the grain field made quartz (before opening);
        the threshold on a unit random field above which the grain surface is coated with
        clay (higher: less clay); pyrite seeds per voxel; the grain field's smoothing in
        voxels (larger grains); the noise's standard deviation. The defaults make the
        course's classic sample; :func:`helpers.demos.make_sandstone_cores` varies them.

    Returns
    -------
    image : float32 (Z, Y, X), roughly in [0, 1]
    labels : uint8 (Z, Y, X): 0 pore, 1 clay, 2 quartz, 3 pyrite (:data:`SANDSTONE_CLASSES`)
    """
    from skimage.morphology import ball

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive ints (Z, Y, X), got {shape}")
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    show = progress if progress is not None else int(np.prod(shape)) >= 8_000_000
    with tqdm(total=6, desc=f"make_sandstone {shape}", unit="step", disable=not show) as bar:
        grains = _field(shape, grain_sigma, rng)
        quartz = grains > np.quantile(grains[::2, ::2, ::2], round(1.0 - quartz_fraction, 12))
        quartz = ndi.binary_opening(quartz, structure=ball(1))
        bar.update()
        pore = ~quartz
        coat = ndi.binary_dilation(quartz, structure=ball(1), iterations=2) & pore
        clay = coat & (_field(shape, 3.0, rng) > clay_threshold)
        bar.update()
        seeds = rng.random(shape, dtype=np.float32) < pyrite_density
        pyrite = ndi.binary_dilation(seeds, structure=ball(2))
        bar.update()

        labels = np.zeros(shape, dtype=np.uint8)
        labels[clay] = 1
        labels[quartz] = 2
        labels[pyrite] = 3

        image = SANDSTONE_LEVELS[labels]
        image += 0.04 * _field(shape, 1.0, rng) * (labels == 1)  # clay is grainy
        image = ndi.gaussian_filter(image, 1.0)
        bar.update()
        image += 0.07 * _field(shape, 24.0, rng)  # slow shading across the sample
        bar.update()
        image += rng.normal(0.0, noise, shape).astype(np.float32)
        bar.update()
    return image.astype(np.float32, copy=False), labels


def write_sandstone_zarr(
    image_path: str | os.PathLike[str],
    shape: Sequence[int],
    labels_path: str | os.PathLike[str] | None = None,
    block: int = 128,
    chunks: int = 64,
    seed: int = 0,
) -> Any:
    """A sandstone of any size, written to zarr tile by tile; returns the image array.

    One ``block``^3 sandstone (:func:`make_sandstone`) is generated, and the volume is
    tiled with its mirror images (flipped along each axis where the tile index is odd),
    so that tiles meet without a seam. Only one block is ever in memory, so ``shape`` may
    exceed it by far. Each store appears only when complete. The label map goes to
    ``labels_path`` (uint8) if given.
    """
    from helpers.zarr_volumes import atomic_folder, create_zarr_volume, open_zarr_volume

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive ints (Z, Y, X), got {shape}")
    image, labels = make_sandstone((block,) * 3, seed, progress=False)
    targets = [(Path(image_path), image)] + ([(Path(labels_path), labels)] if labels_path else [])
    for path, source in targets:
        with atomic_folder(path) as tmp:
            out = create_zarr_volume(tmp, shape, source.dtype, chunks)
            for index in np.ndindex(*(-(-s // block) for s in shape)):
                region = tuple(
                    slice(i * block, min((i + 1) * block, s)) for i, s in zip(index, shape, strict=True)
                )
                tile = source[tuple(slice(None, None, -1) if i % 2 else slice(None) for i in index)]
                out[region] = tile[tuple(slice(0, r.stop - r.start) for r in region)]
    return open_zarr_volume(image_path)


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nilearn is not installed; it ships the MNI152 templates")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def zoom_with_affine(
    array: np.ndarray, affine: np.ndarray, zoom: float, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (Z, Y, X) resampled by ``zoom`` and the affine of the result.

    Voxels are treated as cells (``scipy.ndimage.zoom`` with ``grid_mode=True``): the
    zoomed grid covers the same extent as the original, so the affine's voxel size is
    scaled by ``in / out`` per axis and its origin moved to the first new voxel's centre.
    ``order`` 0 (nearest) suits label maps, 1 (linear) images.
    """
    out = ndi.zoom(array, zoom, order=order, grid_mode=True, mode="nearest")
    scale = np.array(array.shape, float)[::-1] / np.array(out.shape, float)[::-1]  # (x, y, z)
    new = np.asarray(affine, np.float64).copy()
    new[:3, 3] = affine[:3, 3] + affine[:3, :3] @ (0.5 * scale - 0.5)
    new[:3, :3] = affine[:3, :3] * scale
    return out, new


def brain_template(zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 2009a T1 template and its grey- and white-matter probability maps at ``zoom``.

    Returns float32 (Z, Y, X) arrays: T1 intensities, p_gm and p_wm in [0, 1] (resampled
    linearly), and the grid's affine (mm), from the files inside nilearn (no download).
    """
    if not 0 < zoom <= 4:
        raise ValueError(f"zoom must be in (0, 4], got {zoom}")
    root = _nilearn_data_dir()
    t1 = load_volume(root / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    files = [root / f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz" for t in ("gm", "wm")]
    maps = [load_volume(f).array.astype(np.float32) / 255.0 for f in files]
    image, affine = t1.array.astype(np.float32), t1.affine.copy()
    if zoom != 1.0:
        image, affine = zoom_with_affine(image, t1.affine, zoom, order=1)
        maps = [zoom_with_affine(m, t1.affine, zoom, order=1)[0] for m in maps]
    return image, maps[0], maps[1], affine


def load_brain_mri(zoom: float = 1.0) -> tuple[Volume, np.ndarray]:
    """The MNI152 2009a T1 template and a 3-class tissue map, from files inside nilearn.

    Label rule: with the grey- and white-matter probability maps p_gm, p_wm in
    [0, 1], a voxel is white matter (2) if p_wm >= 0.5 and p_wm > p_gm, grey
    matter (1) if p_gm >= 0.5 and p_gm >= p_wm, else background/CSF (0).

    Parameters
    ----------
    zoom : float
        Resampling factor (1.0 keeps the native 1 mm grid, 197 x 233 x 189 voxels
        in x, y, z; 0.5 halves each axis). The probability maps are resampled
        linearly, then labelled.

    Returns
    -------
    image : Volume
        T1 intensities as float32 (Z, Y, X) = (189, 233, 197) at zoom 1, affine in mm.
    labels : uint8 (Z, Y, X)
    """
    image, p_gm, p_wm, affine = brain_template(zoom)
    labels = np.zeros(p_gm.shape, dtype=np.uint8)
    labels[(p_gm >= 0.5) & (p_gm >= p_wm)] = 1
    labels[(p_wm >= 0.5) & (p_wm > p_gm)] = 2
    root = _nilearn_data_dir()
    return Volume(image, affine, "nifti", path=str(root), meta={"name": "MNI152 2009a T1"}), labels


def load_dataset(
    name: str, sandstone_shape: Sequence[int] = (256, 256, 256), brain_zoom: float = 1.0, seed: int = 0
) -> EmbeddedVolume:
    """One embedded volume by name ("sandstone" or "brain"): the classic sample, or the template.

    :func:`open_dataset` gives the course's demos as several cases (:mod:`helpers.demos`).
    """
    if name == "sandstone":
        image, labels = make_sandstone(sandstone_shape, seed)
        return EmbeddedVolume(image, labels, np.eye(4), SANDSTONE_CLASSES, name)
    if name == "brain":
        vol, labels = load_brain_mri(brain_zoom)
        return EmbeddedVolume(vol.array, labels, vol.affine, BRAIN_CLASSES, name)
    raise ValueError(f"dataset must be 'sandstone' or 'brain', got {name!r}")


#: The embedded multi-case dataset: (case, shape (Z, Y, X), spacing (Z, Y, X) mm, format, orientation).
CORES = (
    ("core00", (40, 48, 48), (1.0, 1.0, 1.0), ".nii.gz", "RAS"),
    ("core01", (24, 56, 56), (2.0, 0.8, 0.8), ".nii.gz", "LPS"),
    ("core02", (32, 48, 40), (1.5, 1.0, 1.2), ".npz", "RAS"),
    ("core03", (40, 40, 48), (1.0, 1.2, 1.0), ".tif", "RAS"),
    ("core04", (20, 52, 52), (2.0, 0.9, 0.9), "dicom", "LPS"),
    ("core05", (36, 48, 48), (1.2, 1.0, 1.0), ".nii.gz", "RAS, labels stored LAS"),
    ("core06", (32, 48, 48), (1.0, 1.0, 1.0), ".nii.gz", "LPS"),
)
#: Scans without label maps, in imagesTs/.
CORES_TEST = (
    ("core90", (28, 44, 44), (1.5, 1.0, 1.0), ".nii.gz", "LPS"),
    ("core91", (36, 40, 40), (1.0, 1.0, 1.0), ".npz", "RAS"),
)
#: Stored label ids: 0 pore, 1 clay, 2 quartz, 3 and 4 pyrite (two kinds, merged by dataset.json),
#: 9 mounting resin (merged into the background by dataset.json: an undeclared id is refused).
CORES_LABELS = {"pore": [0, 9], "clay": 1, "quartz": 2, "pyrite": [3, 4]}


def _oriented_affine(spacing: Sequence[float], codes: str, shape: Sequence[int]) -> np.ndarray:
    """Affine for a grid stored with x, y, z pointing to ``codes`` (e.g. "LPS"), centred near 0."""
    dz, dy, dx = spacing
    signs = [1.0 if c in "RAS" else -1.0 for c in codes]
    affine = np.diag([signs[0] * dx, signs[1] * dy, signs[2] * dz, 1.0])
    affine[:3, 3] = [-s * n * d / 2 for s, n, d in zip(signs, shape[::-1], (dx, dy, dz), strict=True)]
    return affine


def make_cores_dataset(
    folder: str | os.PathLike[str], seed: int = 0, *, cases: Sequence[str] | None = None
) -> Path:
    """Write the embedded multi-case dataset, "SandstoneCores", in the Decathlon layout.

    Seven labelled micro-CT-like sandstone cores (:func:`make_sandstone` with other
    seeds and sizes) and two unlabelled ones, in mixed formats (NIfTI, ``.npz``,
    TIFF, a DICOM series), orientations (RAS, LPS, and one label map stored LAS for
    a RAS image) and anisotropic spacings, with grey values in Hounsfield-like units
    (modality CT) and a ``dataset.json`` that merges two pyrite ids, and the resin
    id into the background. Takes about a second. Returns ``folder``.

    ``cases`` keeps only those labelled cores (``["core04", "core05"]``: a DICOM series and a
    label map stored in another orientation), for a folder of one or two cases.
    """
    unknown = sorted(set(cases or ()) - {c[0] for c in CORES})
    if unknown or (cases is not None and not cases):
        raise ValueError(f"cases={cases!r}: name labelled cores of {[c[0] for c in CORES]}")
    from helpers.formats.dicom import write_dicom_series
    from helpers.io import save_volume

    root = Path(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, (name, shape, spacing, fmt, orient) in enumerate(CORES + CORES_TEST):
        if cases is not None and k < len(CORES) and name not in cases:
            continue
        image, labels = make_sandstone(shape, seed=seed + 100 + k)
        hu = np.round(image * 2000.0 - 1000.0).astype(np.int16)
        stored = labels.copy()
        rng = np.random.default_rng(seed + k)
        stored[(labels == 3) & (rng.random(shape) < 0.5)] = 4
        stored[:2, :2, :] = 9
        affine = _oriented_affine(spacing, orient[:3], shape)
        # the arrays are generated in RAS order; store them flipped where the axes point the other way
        flips = tuple(2 - i for i, c in enumerate(orient[:3]) if c not in "RAS")
        hu, stored = np.flip(hu, flips).copy(), np.flip(stored, flips).copy()
        labelled = (name, shape, spacing, fmt, orient) in CORES
        folder_img = root / ("imagesTr" if labelled else "imagesTs")
        if fmt == "dicom":
            write_dicom_series(folder_img / f"{name}_0000", hu, affine, description=name)
        else:
            save_volume(folder_img / f"{name}_0000{fmt}", hu, affine=affine)
        if not labelled:
            continue
        if "labels stored LAS" in orient:
            las = affine.copy()
            las[:3, 3] += las[:3, 0] * (shape[2] - 1)
            las[:3, 0] *= -1
            save_volume(root / "labelsTr" / f"{name}.nii.gz", np.flip(stored, 2).copy(), affine=las)
        else:
            suffix = fmt if fmt != "dicom" else ".nii.gz"
            save_volume(root / "labelsTr" / f"{name}{suffix}", stored, affine=affine)
    spec = {
        "name": "SandstoneCores",
        "description": "Synthetic micro-CT sandstone cores in mixed formats, orientations and spacings",
        "modality": "CT",
        "labels": CORES_LABELS,
        "file_ending": "mixed",
    }
    (root / "dataset.json").write_text(json.dumps(spec, indent=1) + "\n")
    return root
