"""Embedded datasets: offline, deterministic, and split without spatial leakage.

- :func:`make_sandstone` builds a synthetic micro-CT sandstone with the four
  phases of the classic sandstone 3D U-Net tutorial (pore, clay, quartz, pyrite).
- :func:`load_brain_mri` reads the real MNI152 2009a T1 template and its grey/white
  matter maps, which ship inside the nilearn package (no download).
- :func:`spatial_split` cuts a volume into disjoint training and validation slabs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from helpers.io import Volume, load_volume

SANDSTONE_CLASSES = ("pore", "clay", "quartz", "pyrite")
BRAIN_CLASSES = ("background/CSF", "grey matter", "white matter")
#: Mean grey value of each sandstone phase before blur, shading and noise.
SANDSTONE_LEVELS = np.array([0.12, 0.40, 0.62, 0.92], dtype=np.float32)


class Dataset(NamedTuple):
    """An embedded dataset: image float32 (Z, Y, X), labels uint8 (Z, Y, X), geometry."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    class_names: tuple[str, ...]
    name: str


def _field(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field with unit standard deviation, float32."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    f /= f.std() + 1e-12
    return f


def make_sandstone(shape: Sequence[int] = (256, 256, 256), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
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

    Returns
    -------
    image : float32 (Z, Y, X), roughly in [0, 1]
    labels : uint8 (Z, Y, X): 0 pore, 1 clay, 2 quartz, 3 pyrite (:data:`SANDSTONE_CLASSES`)
    """
    from skimage.morphology import ball

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive ints (Z, Y, X), got {shape}")
    rng = np.random.default_rng(seed)
    grains = _field(shape, 4.0, rng)
    quartz = grains > np.quantile(grains[::2, ::2, ::2], 0.45)
    quartz = ndi.binary_opening(quartz, structure=ball(1))
    pore = ~quartz
    coat = ndi.binary_dilation(quartz, structure=ball(1), iterations=2) & pore
    clay = coat & (_field(shape, 3.0, rng) > -0.2)
    seeds = rng.random(shape, dtype=np.float32) < 6e-4
    pyrite = ndi.binary_dilation(seeds, structure=ball(2))

    labels = np.zeros(shape, dtype=np.uint8)
    labels[clay] = 1
    labels[quartz] = 2
    labels[pyrite] = 3

    image = SANDSTONE_LEVELS[labels]
    image += 0.04 * _field(shape, 1.0, rng) * (labels == 1)  # clay is grainy
    image = ndi.gaussian_filter(image, 1.0)
    image += 0.07 * _field(shape, 24.0, rng)  # slow shading across the sample
    image += rng.normal(0.0, 0.08, shape).astype(np.float32)
    return image.astype(np.float32, copy=False), labels


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nilearn is not installed; it ships the MNI152 templates")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def load_brain_mri(zoom: float = 1.0) -> tuple[Volume, np.ndarray]:
    """The MNI152 2009a T1 template and a 3-class tissue map, from files inside nilearn.

    Label rule: with the grey- and white-matter probability maps p_gm, p_wm in
    [0, 1], a voxel is white matter (2) if p_wm >= 0.5 and p_wm > p_gm, grey
    matter (1) if p_gm >= 0.5 and p_gm >= p_wm, else background/CSF (0).

    Parameters
    ----------
    zoom : float
        Resampling factor (1.0 keeps the native 1 mm grid, 197 x 233 x 189 voxels
        in x, y, z; 0.5 halves each axis). Labels use nearest neighbour.

    Returns
    -------
    image : Volume
        T1 intensities as float32 (Z, Y, X) = (189, 233, 197) at zoom 1, affine in mm.
    labels : uint8 (Z, Y, X)
    """
    root = _nilearn_data_dir()
    t1 = load_volume(root / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = load_volume(root / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").array
    wm = load_volume(root / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").array
    p_gm = gm.astype(np.float32) / 255.0
    p_wm = wm.astype(np.float32) / 255.0
    labels = np.zeros(p_gm.shape, dtype=np.uint8)
    labels[(p_gm >= 0.5) & (p_gm >= p_wm)] = 1
    labels[(p_wm >= 0.5) & (p_wm > p_gm)] = 2
    image = t1.array.astype(np.float32)
    affine = t1.affine.copy()
    if zoom != 1.0:
        if not 0 < zoom <= 4:
            raise ValueError(f"zoom must be in (0, 4], got {zoom}")
        image = ndi.zoom(image, zoom, order=1)
        labels = ndi.zoom(labels, zoom, order=0)
        affine[:3, :3] /= zoom
    return Volume(image, affine, "nifti", path=str(root), meta={"name": "MNI152 2009a T1"}), labels


def spatial_split(
    volume_shape: Sequence[int], fraction: float, axis: int = 0
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Split a volume into a training slab and a disjoint held-out slab along ``axis``.

    The last ``fraction`` of the axis (at least one voxel) is held out. Use the two
    index tuples on image and labels alike; sample patches from each part
    separately so that no patch straddles the split.

    Returns
    -------
    (train, held_out) : tuples of slices, one per axis of ``volume_shape``
    """
    shape = tuple(int(s) for s in volume_shape)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} does not exist for shape {shape}")
    axis %= len(shape)
    n = shape[axis]
    cut = n - max(1, int(round(n * fraction)))
    if cut < 1:
        raise ValueError(f"axis {axis} of length {n} is too short to split")
    train = [slice(None)] * len(shape)
    held = [slice(None)] * len(shape)
    train[axis], held[axis] = slice(0, cut), slice(cut, n)
    return tuple(train), tuple(held)


#: Which axis each dataset is split along: the sandstone along Z; the brain
#: back-to-front (array axis Y, the frontal lobe is held out). Not left-right: the
#: 2009a template is symmetric, so the held-out half would be the mirror image of
#: the training half, and flip augmentation would leak it.
SPLIT_AXIS = {"sandstone": 0, "brain": 1}


def load_dataset(
    name: str, sandstone_shape: Sequence[int] = (256, 256, 256), brain_zoom: float = 1.0, seed: int = 0
) -> Dataset:
    """Load an embedded dataset by name ("sandstone" or "brain")."""
    if name == "sandstone":
        image, labels = make_sandstone(sandstone_shape, seed)
        return Dataset(image, labels, np.eye(4), SANDSTONE_CLASSES, name)
    if name == "brain":
        vol, labels = load_brain_mri(brain_zoom)
        return Dataset(vol.array, labels, vol.affine, BRAIN_CLASSES, name)
    raise ValueError(f"dataset must be 'sandstone' or 'brain', got {name!r}")
