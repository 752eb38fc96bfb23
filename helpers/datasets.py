"""Embedded datasets: offline, deterministic, and split without spatial leakage.

- :func:`make_sandstone` builds a synthetic micro-CT sandstone with the four
  phases of the classic sandstone 3D U-Net tutorial (pore, clay, quartz, pyrite).
- :func:`load_brain_mri` reads the real MNI152 2009a T1 template and its grey/white
  matter maps, which ship inside the nilearn package (no download).
- :func:`open_dataset` opens a dataset folder (Decathlon / nnU-Net layout) or an
  embedded volume as one :class:`Dataset`: aligned, resampled, normalised, split.
- :func:`make_cores_dataset` writes the embedded multi-case dataset, SandstoneCores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from helpers.case_cache import (
    CANDIDATES_PER_CLASS,
    CacheError,
    MappedArrays,
    cache_folder,
    class_candidates,
    is_complete_npy,
    open_case,
    read_case,
    save_array,
    source_stamp,
    worker_count,
    write_case,
)
from helpers.case_cache import build_cases as _build_cases
from helpers.checks import check_image
from helpers.config import DATASETS, OUTPUTS
from helpers.geometry import Resampling, check_spacing, ras_spacing, reorient, to_working_grid
from helpers.io import load_volume
from helpers.label_maps import read_label_map, remap_to_classes  # noqa: F401  (remap_to_classes: old path)
from helpers.memory import release_pages
from helpers.planning import case_statistics
from helpers.preprocessing import MODALITIES, apply_normalisation, fit_normalisation
from helpers.splits import FRACTIONS, PARTS, SplitError, slab_index, split_cases, split_slabs
from helpers.volume import Volume, VolumeError

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


# ------------------------------------------------------------------ datasets in folders


class DatasetError(VolumeError):
    """A dataset folder or ``dataset.json`` that cannot be used; the message names the file or case."""


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy", ".tif", ".tiff")


@dataclass
class Case:
    """One scan on the dataset's working grid (RAS, target spacing), ready for sampling.

    Attributes
    ----------
    name : str
    image : float32 (Z, Y, X), normalised with the dataset's ``normalisation``
    labels : uint8 (Z, Y, X) class indices, or None for an unlabelled scan
    resampling : :class:`helpers.geometry.Resampling`
        ``resampling.affine`` is the working grid's affine; ``resampling.invert``
        takes a prediction back to the scan's native grid.
    image_path, labels_path : str or None
        The scan's file (its first channel's) and its label map.
    image_paths : tuple of str
        Every channel file of the scan, in channel order.
    candidates : dict of int to int64 array, optional
        Flat indices of up to :data:`helpers.case_cache.CANDIDATES_PER_CLASS` voxels of
        each foreground class, kept by the cache for foreground oversampling.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray | None
    resampling: Resampling
    image_path: str | None = None
    labels_path: str | None = None
    candidates: dict[int, np.ndarray] | None = None
    image_paths: tuple[str, ...] = ()

    @property
    def affine(self) -> np.ndarray:
        return self.resampling.affine

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[:3])  # type: ignore[return-value]


@dataclass
class Dataset:
    """A labelled dataset on one working grid, split and normalised.

    ``cases`` hold the labelled scans; ``split`` says which case (or, for a single
    volume, which slab) is train, val and test (:mod:`helpers.splits`);
    ``normalisation`` was fitted on the training part only; ``unlabelled`` lists the
    scans of ``imagesTs/`` to segment (paths, loaded on demand; every channel file of a
    scan, as :func:`helpers.predict.predict_scans` takes them). ``channel_names`` name
    the image channels in order; ``cache`` is the folder of its preprocessed cases
    (``modality`` is then one modality per channel). ``case_stats`` holds each case's
    :func:`helpers.planning.case_statistics` (its fingerprint); ``spacing_source`` says
    where ``target_spacing`` came from ("median" of the cases, "dataset.json", "argument",
    "embedded"); ``plan`` is the training plan :func:`helpers.experiment.prepare` made
    (:func:`helpers.planning.make_plan`). ``reads`` counts the calls of
    :meth:`part` per part, so a notebook can show (and a test check) that it touched the
    test part once.
    """

    name: str
    modality: str | list[str]
    class_names: tuple[str, ...]
    label_ids: list[list[int]]
    cases: list[Case]
    split: dict[str, Any]
    normalisation: dict[str, Any]
    target_spacing: tuple[float, float, float]
    unlabelled: list[str] = field(default_factory=list)
    root: str | None = None
    fingerprint: str = ""
    channel_names: tuple[str, ...] = ("image",)
    cache: str | None = None
    case_stats: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    spacing_source: str = "median"
    plan: dict[str, Any] | None = None
    reads: Counter[str] = field(default_factory=Counter, compare=False, repr=False)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    def case(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(f"dataset {self.name!r} has no case {name!r}; it has {[c.name for c in self.cases]}")

    def part(self, which: str) -> list[tuple[Case, tuple[slice, ...]]]:
        """(case, region) pairs of split part ``which`` ("train", "val" or "test")."""
        if which not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {which!r}")
        self.reads[which] += 1
        return _parts(self.cases, self.split, which)

    def arrays(self, which: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Images and label maps of part ``which`` as lists of array views (no copies)."""
        pairs = self.part(which)
        return [c.image[r] for c, r in pairs], [c.labels[r] for c, r in pairs]  # type: ignore[index]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise DatasetError(path, "no dataset.json: a dataset folder needs one (name, modality, labels)")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise DatasetError(path, f"is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(path, "must hold a JSON object")
    return data


#: nnU-Net v2's ``dataset.json``: the keys it requires, and the optional keys it documents that the
#: course reads or ignores. ``regions_class_order`` (region training) is refused by name.
NNUNET_REQUIRED = ("channel_names", "labels", "numTraining", "file_ending")
NNUNET_OPTIONAL = (
    "name",
    "description",
    "reference",
    "licence",
    "license",
    "release",
    "overwrite_image_reader_writer",
)
#: A folder's name as nnU-Net and the Decathlon write it: ``Dataset042_Brain``, ``Task09_Spleen``.
FOLDER_NAME = re.compile(r"^(?:Dataset\d{3}|Task\d{2,3})_(?P<name>.+)$")


def dataset_name(spec: dict[str, Any], root: Path, path: Path) -> str:
    """The dataset's name: ``spec["name"]``, else the folder's (``Dataset042_Brain`` -> ``Brain``).

    nnU-Net v2 requires only ``channel_names``, ``labels``, ``numTraining`` and
    ``file_ending``; a ``dataset.json`` in that form is checked for exactly those.
    """
    if "channel_names" in spec:
        missing = [k for k in NNUNET_REQUIRED if k not in spec]
        if missing:
            raise DatasetError(
                path, f"lacks the key(s) {missing}, which nnU-Net v2 requires beside 'channel_names'"
            )
        if "regions_class_order" in spec:
            raise DatasetError(
                path, "has 'regions_class_order': nnU-Net region training, which this course does not do"
            )
        count = spec["numTraining"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise DatasetError(path, f"'numTraining' must be a whole number >= 1, got {count!r}")
        ending = spec["file_ending"]
        if not isinstance(ending, str) or not ending.startswith("."):
            raise DatasetError(path, f"'file_ending' must be a suffix such as '.nii.gz', got {ending!r}")
    name = spec.get("name")
    if name is None:
        match = FOLDER_NAME.match(root.name)
        return match["name"] if match else root.name
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(path, f"'name' must be a non-empty string, got {name!r}")
    return name


def _check_training_count(spec: dict[str, Any], found: int, path: Path) -> None:
    """nnU-Net v2's ``numTraining`` must count the labelled cases found (as nnU-Net checks it)."""
    count = spec.get("numTraining")
    if "channel_names" in spec and count != found:
        raise DatasetError(
            path, f"'numTraining' is {count}, but imagesTr/ and labelsTr/ hold {found} case(s)"
        )


def _channels(spec: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    """(name, modality) of each image channel, in order; modality is "CT", "MR" or "other".

    The course's own ``modality`` string must name one of :data:`MODALITIES` (one
    channel). The public forms, MSD's ``modality`` and nnU-Net v2's ``channel_names``
    ({"0": "T2", "1": "ADC"}), are free text read as nnU-Net reads it: "CT" selects the
    CT scheme, anything else ("MRI", "T2", "noNorm"...) a per-case z-score.
    """
    raw = spec.get("channel_names", spec.get("modality"))
    if isinstance(raw, dict) and raw:
        try:
            order = sorted(raw, key=int)
        except ValueError:
            raise DatasetError(path, f"channel keys must be 0, 1, ...; got {list(raw)}") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise DatasetError(path, f"channel keys must be 0, 1, ... without gaps; got {list(raw)}")
        out = []
        for key in order:
            text = str(raw[key]).strip()
            modality = "CT" if text.upper() == "CT" else "MR" if text.upper() in ("MR", "MRI") else "other"
            out.append((text, modality))
        return out
    if raw is None:
        raise DatasetError(path, 'lacks the key \'modality\' ("CT", "MR" or "other")')
    for m in MODALITIES:
        if str(raw).lower() == m.lower():
            return [("image", m)]
    raise DatasetError(path, f"modality {raw!r} is unknown; use one of {MODALITIES}")


def _labels(spec: dict[str, Any], path: Path) -> tuple[tuple[str, ...], list[list[int]]]:
    """Class names and the stored ids merged into each class; class 0 holds id 0 (background)."""
    raw = spec.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(path, "lacks 'labels', a mapping of class name to label id (or list of ids)")
    regions = [k for k, v in raw.items() if isinstance(v, list)] if "channel_names" in spec else []
    if regions:
        raise DatasetError(
            path,
            f"labels {regions} are nnU-Net regions (lists of ids that overlap, BraTS-style), which this "
            "course does not train; give each class one id, or use the course's own dataset.json form, "
            "where a list merges ids into one class",
        )
    if all(str(k).isdigit() for k in raw) and all(isinstance(v, str) for v in raw.values()):
        raw = {v: int(k) for k, v in raw.items()}  # Decathlon style: {"0": "background", ...}
    names, ids = [], []
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise DatasetError(path, f"label {name!r} must be an id >= 0 or a list of them, got {value!r}")
        names.append(str(name))
        ids.append([int(v) for v in values])
    flat = [v for group in ids for v in group]
    if len(set(flat)) != len(flat):
        raise DatasetError(path, f"a label id is listed under two classes: {raw}")
    background = [i for i, group in enumerate(ids) if 0 in group]
    if background:
        order = background + [i for i in range(len(ids)) if i != background[0]]
        names, ids = [names[i] for i in order], [ids[i] for i in order]
    else:
        names, ids = ["background", *names], [[0], *ids]
    if len(names) < 2:
        raise DatasetError(path, "labels must name at least one class besides the background")
    return tuple(names), ids


def check_channel_count(
    volume: Volume, expected: int, who: str = "the model takes", names: Sequence[str] = ()
) -> Volume:
    """``volume`` if it has ``expected`` image channels (a 4-D array of one channel is made 3-D).

    Raises
    ------
    VolumeError
        Another number of channels; the message names the file and both counts.
    """
    if volume.array.ndim == 4 and volume.array.shape[3] == 1:
        volume.array = volume.array[..., 0]
    found = volume.array.shape[3] if volume.array.ndim == 4 else 1
    if found != expected:
        listing = f" ({', '.join(names)})" if names else ""
        raise VolumeError(volume.path, f"has {found} image channel(s), but {who} {expected}{listing}")
    return volume


def volume_stem(path: Path) -> str:
    """A file's name less its volume suffix (``.nii.gz``, ``.npz``...); a folder's name."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


#: An nnU-Net image name: the case id, then ``_`` and a four-digit channel index.
CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def volume_files(folder: Path) -> list[Path]:
    """Volume files and DICOM folders in ``folder``, without hidden files (macOS ``._`` copies)."""
    return [
        p
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES))
    ]


def _entries(folder: Path, cases: set[str] | None = None) -> dict[str, list[Path]]:
    """Image files and DICOM folders in ``folder`` by case id, each case's channels in order.

    An image's trailing ``_NNNN`` is its channel index when stripping it gives a case
    of ``cases`` (the label maps), or, without ``cases``, when every image of the folder
    has one (nnU-Net's rule); otherwise it is part of the id (MSD's ``spleen_2``, one
    file per case, several channels on a fourth axis).
    """
    paths = volume_files(folder)
    stems = {p: volume_stem(p) for p in paths}
    every = all(CHANNEL_PATTERN.match(s) for s in stems.values())
    found: dict[str, dict[int, Path]] = {}
    for path, stem in stems.items():
        match = CHANNEL_PATTERN.match(stem)
        suffixed = match is not None and (match["case"] in cases if cases is not None else every)
        case, channel = (match["case"], int(match["channel"])) if suffixed else (stem, 0)  # type: ignore[index]
        if channel in found.setdefault(case, {}):
            raise DatasetError(path, f"names case {case!r} twice (also {found[case][channel].name})")
        found[case][channel] = path
    out = {}
    for case, channels in found.items():
        missing = sorted(set(range(max(channels) + 1)) - set(channels))
        if missing:
            first = channels[min(channels)]
            raise DatasetError(
                first, f"case {case!r} lacks image channel(s) {[f'_{c:04d}' for c in missing]}"
            )
        out[case] = [channels[c] for c in sorted(channels)]
    return out


def _label_entries(folder: Path) -> dict[str, Path]:
    """Label maps in ``folder`` by case id: a label file's name is its case id (``amos_0507``)."""
    found: dict[str, Path] = {}
    for path in volume_files(folder):
        case = volume_stem(path)
        if case in found:
            raise DatasetError(path, f"names case {case!r} twice (also {found[case].name})")
        found[case] = path
    return found


def load_channels(paths: Sequence[str | os.PathLike[str]]) -> Volume:
    """One scan from its channel files (``case_0000``, ``case_0001``...) or one file, as (Z, Y, X[, C]).

    Every channel must lie on the first one's grid (same shape and affine).

    Raises
    ------
    VolumeError
        A channel on another grid, or a channel file that itself holds several channels;
        the message names the file.
    """
    paths = [Path(p) for p in paths]
    first = load_volume(paths[0])
    if len(paths) == 1:
        return first
    arrays = [first.array]
    for path in paths[1:]:
        vol = load_volume(path)
        if vol.array.ndim != 3 or first.array.ndim != 3:
            raise VolumeError(path, "a channel file must hold one 3-D channel")
        if vol.shape != first.shape or not np.allclose(vol.affine, first.affine, atol=1e-3):
            raise VolumeError(
                path,
                f"lies on another grid (shape {vol.shape}) than channel 0, {paths[0].name} (shape "
                f"{first.shape}); every channel of a case must share one grid",
            )
        arrays.append(vol.array)
    first.array = np.stack(arrays, axis=-1)
    return first


def _listed(spec: dict[str, Any], key: str, root: Path, spec_path: Path) -> list[dict[str, Path]] | None:
    """MSD's ``training`` ([{"image", "label"}]) or ``test`` ([paths]) list as paths under ``root``."""
    items = spec.get(key)
    if not isinstance(items, list) or not items:
        return None
    out = []
    for item in items:
        entry = item if isinstance(item, dict) else {"image": item}
        paths = {}
        for role, rel in entry.items():
            if role not in ("image", "label"):
                continue
            path = (root / str(rel)).resolve()
            if not path.exists():
                raise DatasetError(spec_path, f"'{key}' lists {rel!r}, but {path} does not exist")
            paths[role] = path
        out.append(paths)
    return out


def _fingerprint(spec: dict[str, Any], files: Sequence[Path]) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for f in files:
        size = sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) if f.is_dir() else f.stat().st_size
        digest.update(f"{f.name}:{size}".encode())
    return digest.hexdigest()[:16]


def open_dataset(
    path: str | os.PathLike[str],
    seed: int = 0,
    target_spacing: Sequence[float] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    sandstone_shape: Sequence[int] = (256, 256, 256),
    brain_zoom: float = 1.0,
    cache: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Open a labelled dataset: a folder in the Decathlon / nnU-Net layout, or an embedded name.

    A folder holds ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` (one label map
    per image, matched by case name; ``case_0000.nii.gz`` is case ``case``) and
    optionally ``imagesTs/`` (scans to segment). Images may be NIfTI, ``.npz``,
    ``.npy``, TIFF or DICOM series folders. ``dataset.json`` gives ``name``,
    ``modality`` ("CT", "MR" or "other") and ``labels`` (class name -> id, or -> a
    list of ids to merge; ids not listed become background), and optionally
    ``target_spacing`` (Z, Y, X mm) and ``split`` ({"train": [...], "val": [...],
    "test": [...]} case names).

    Every case is aligned (a label map stored in another orientation of the image's
    grid is reoriented; another grid is refused), reoriented to RAS and resampled to
    the target spacing (default: the median spacing per axis), images linearly and
    labels per class. The cases are split by case with ``seed`` (or ``split``),
    and the normalisation for the modality is fitted on the training cases only.

    A folder's cases are preprocessed once, to disk (:mod:`helpers.case_cache`), under
    ``cache`` (default: :func:`default_cache`), in ``workers`` processes (default: one
    per core when there is much to do), with a progress bar unless ``progress`` is
    False. Opening the folder again reuses every case whose files are unchanged, and
    preprocesses again only the cases that changed or were not finished. The cases'
    ``image`` and ``labels`` are then read-only memory maps (float32 normalised
    intensities, class indices), so memory does not grow with the number of cases.

    ``"sandstone"`` and ``"brain"`` give the embedded demos through the same type: five
    generated cases each (sandstone cores of ``sandstone_shape``, brain subjects at
    ``brain_zoom``, :mod:`helpers.demos`), split by case with ``seed``. A folder of one or
    two cases is instead cut into train, validation and test slabs along Z.

    Raises
    ------
    DatasetError
        Missing ``dataset.json`` or keys, unknown modality, target spacing <= 0,
        images without label maps or the reverse, a label id that no label map
        contains, a label map on another grid, non-integer labels, a corrupt case:
        the message names the case and the file.
    """
    if str(path) in DATASETS:
        return _embedded(str(path), seed, fractions, sandstone_shape, brain_zoom)
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(root, f"is neither an embedded dataset ({', '.join(DATASETS)}) nor a folder")
    spec_path = root / "dataset.json"
    spec = _read_json(spec_path)
    name = dataset_name(spec, root, spec_path)
    channels = _channels(spec, spec_path)
    modality: str | list[str] = channels[0][1] if len(channels) == 1 else [m for _, m in channels]
    class_names, label_ids = _labels(spec, spec_path)
    spacing_source = "argument" if target_spacing is not None else "median"
    if target_spacing is None and spec.get("target_spacing") is not None:
        target_spacing, spacing_source = spec["target_spacing"], "dataset.json"
    if target_spacing is not None:
        try:
            target_spacing = check_spacing(target_spacing)
        except VolumeError as err:
            raise DatasetError(spec_path, f"target_spacing {err.reason}") from None
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            raise DatasetError(root / sub, "folder is missing; a dataset needs imagesTr/ and labelsTr/")
    listed = _listed(spec, "training", root, spec_path)
    if listed is not None and all("label" in e for e in listed):
        label_files = {volume_stem(e["label"]): e["label"] for e in listed}
        images = {volume_stem(e["label"]): [e["image"]] for e in listed}
    else:
        label_files = _label_entries(root / "labelsTr")
        images = _entries(root / "imagesTr", set(label_files))
    for stem in sorted(set(images) - set(label_files)):
        raise DatasetError(images[stem][0], f"case {stem!r} has an image but no label map in labelsTr/")
    for stem in sorted(set(label_files) - set(images)):
        raise DatasetError(label_files[stem], f"case {stem!r} has a label map but no image in imagesTr/")
    if not images:
        raise DatasetError(root / "imagesTr", "holds no images")
    _check_training_count(spec, len(images), spec_path)

    sources = {stem: ([str(p) for p in images[stem]], str(label_files[stem])) for stem in sorted(images)}
    if target_spacing is None:
        spacings = [_native_spacing(paths[0], stem) for stem, (paths, _) in sources.items()]
        target_spacing = tuple(float(np.median([s[i] for s in spacings])) for i in range(3))
    target_spacing = tuple(float(s) for s in target_spacing)
    root_cache = Path(cache) if cache is not None else default_cache()
    key = {
        "root": str(root.resolve()),
        "spacing": target_spacing,
        "labels": label_ids,
        "channels": len(channels),
        "stats": 1,  # metas hold each case's statistics (helpers.planning)
    }
    folder = cache_folder(root_cache, name, key)
    metas = _preprocess(folder, sources, len(channels), label_ids, target_spacing, workers, progress)
    present = set().union(*(m["stored_ids"] for m in metas.values()))
    for cls, group in zip(class_names, label_ids, strict=True):
        missing = [i for i in group if i not in present and i != 0]
        if missing:
            raise DatasetError(
                spec_path, f"label {cls!r} lists id(s) {missing} that no label map in labelsTr/ contains"
            )
    cases = []
    for stem, meta in metas.items():
        raw, labels, candidates = open_case(folder / "cases" / stem)
        record = Resampling.from_json(meta["resampling"])
        case = Case(stem, raw, labels, record, meta["image_path"], meta["labels_path"], candidates)
        case.image_paths = tuple(sources[stem][0])
        cases.append(case)

    names = [c.name for c in cases]
    if len(cases) < MIN_CASES_TO_SPLIT and spec.get("split") is None:
        split = _slab_split(cases, fractions, spec_path)
    else:
        split = _case_split(spec.get("split"), names, seed, fractions, spec_path)
    train = _parts(cases, split, "train")
    regions = [r for _, r in train]
    images_tr, labels_tr = (
        MappedArrays([folder / "cases" / c.name / f"{what}.npy" for c, _ in train], regions)
        for what in ("image", "labels")
    )
    stats = fit_normalisation(images_tr, labels_tr, modality, seed)
    _normalise_cached(folder, cases, metas, stats)
    unlabelled = []
    tests = _listed(spec, "test", root, spec_path)
    if tests is not None:
        unlabelled = [str(e["image"]) for e in tests if "image" in e]
    elif (root / "imagesTs").is_dir():
        unlabelled = [str(p) for paths in _entries(root / "imagesTs").values() for p in paths]
    files = [*(p for paths in images.values() for p in paths), *label_files.values()]
    return Dataset(
        name,
        modality,
        class_names,
        label_ids,
        cases,
        split,
        stats,
        tuple(float(s) for s in target_spacing),  # type: ignore[arg-type]
        unlabelled,
        str(root),
        _fingerprint(spec, files),
        tuple(n for n, _ in channels),
        str(folder),
        {stem: meta["stats"] for stem, meta in metas.items()},
        spacing_source,
    )


#: Where folder datasets are preprocessed when ``open_dataset`` gets no ``cache``.
CACHE_ENV = "HELPERS_CACHE_DIR"


def default_cache() -> Path:
    """``$HELPERS_CACHE_DIR`` if set, else ``outputs/preprocessed`` in the course folder."""
    return Path(os.environ.get(CACHE_ENV) or OUTPUTS / "preprocessed")


def _native_spacing(path: str, case: str) -> tuple[float, float, float]:
    """Case ``case``'s spacing (RAS, Z, Y, X mm) from its scan ``path``; a NIfTI's from its header alone."""
    if str(path).lower().endswith((".nii", ".nii.gz")) and Path(path).is_file():
        import nibabel as nib

        try:
            return ras_spacing(np.asarray(nib.load(path).affine, dtype=np.float64))
        except Exception as err:  # nibabel raises many types for damaged headers
            reason = f"corrupt or truncated file ({type(err).__name__}: {err})"
            raise DatasetError(path, f"case {case!r}: {reason}") from None
    try:
        return ras_spacing(load_volume(path).affine)
    except VolumeError as err:
        raise DatasetError(err.path, f"case {case!r}: {err.reason}") from None


@dataclass(frozen=True)
class _CaseJob:
    """One case to preprocess into ``folder`` (picklable, for a worker process)."""

    name: str
    images: tuple[str, ...]
    labels: str
    folder: str
    n_channels: int
    label_ids: tuple[tuple[int, ...], ...]
    target_spacing: tuple[float, float, float]


def _preprocess_case(job: _CaseJob) -> dict[str, Any] | tuple[str, str | None, str]:
    """Load, check, align, remap and resample one case into the cache; (error type, file, reason) if not."""
    try:
        image = load_channels(job.images)
        check_channel_count(image, job.n_channels, "dataset.json lists")
        check_image(image.array, job.images[0])
        classes, ids = read_label_map(job.labels, image, label_ids=[list(g) for g in job.label_ids])
        stats = _native_statistics(image, classes, len(job.label_ids), job.name)
        work, record = to_working_grid(image, job.target_spacing)
        image_array = work.array.astype(np.float32, copy=False)
        del image, work
        n = len(job.label_ids)
        labels = Volume(classes, record.native_affine, "numpy")
        work_labels = to_working_grid(labels, job.target_spacing, labels=True, n_classes=n)[0].array
        del labels, classes
        candidates = class_candidates(work_labels, range(1, max(n, 2)), limit=CANDIDATES_PER_CLASS)
        meta = {
            "name": job.name,
            "sources": source_stamp([*job.images, job.labels]),
            "image_path": job.images[0],
            "labels_path": job.labels,
            "stored_ids": ids,
            "stats": stats,
            "resampling": record.to_json(),
        }
        return write_case(Path(job.folder), {"image": image_array, "labels": work_labels}, candidates, meta)
    except VolumeError as err:  # returned, not raised: it travels back from a worker process
        return (type(err).__name__, err.path, err.reason)


def _native_statistics(image: Volume, classes: np.ndarray, n_classes: int, name: str) -> dict[str, Any]:
    """:func:`helpers.planning.case_statistics` of a case on its native grid, turned to RAS."""
    ras_image = reorient(image)[0]
    ras_classes = reorient(Volume(classes, image.affine, "numpy"))[0].array
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return case_statistics(ras_image.array, ras_classes, ras_image.spacing, n_classes, seed=seed)


#: Below this many bytes of source files to preprocess, starting worker processes costs more than it saves.
PARALLEL_BYTES = 64 * 2**20


def _preprocess(
    folder: Path,
    sources: dict[str, tuple[list[str], str]],
    n_channels: int,
    label_ids: list[list[int]],
    target_spacing: Sequence[float],
    workers: int | None,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Every case's cache ``meta``, preprocessing the cases not yet cached (or changed since)."""
    metas: dict[str, dict[str, Any]] = {}
    jobs = []
    ids = tuple(tuple(int(i) for i in g) for g in label_ids)
    spacing = tuple(float(s) for s in target_spacing)
    for stem, (image_paths, labels_path) in sources.items():
        where = folder / "cases" / stem
        meta = read_case(where, [*image_paths, labels_path])
        if meta is not None:
            metas[stem] = meta
        else:
            jobs.append(_CaseJob(stem, tuple(image_paths), labels_path, str(where), n_channels, ids, spacing))  # type: ignore[arg-type]
    if workers is None:
        size = sum(e[1] for job in jobs for e in source_stamp([*job.images, job.labels]))
        workers = worker_count(len(jobs), None) if size >= PARALLEL_BYTES else 1
    results = _build_cases(_preprocess_case, jobs, worker_count(len(jobs), workers), progress=progress)
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, tuple):
            kind, path, reason = result
            if kind == CacheError.__name__:
                raise CacheError(path, reason)
            raise DatasetError(path, f"case {job.name!r}: {reason}")
        metas[job.name] = result
    return {stem: metas[stem] for stem in sources}


def _normalise_cached(
    folder: Path, cases: Sequence[Case], metas: dict[str, dict[str, Any]], stats: dict[str, Any]
) -> None:
    """Point each case's ``image`` at its normalised copy in the cache, writing the copies missing."""
    digest = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:12]
    target = folder / f"normalised-{digest}"
    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        meta = metas[case.name]
        path = target / f"{case.name}.{meta['id']}.npy"
        raw = case.image
        if not is_complete_npy(path, raw.shape, "float32"):
            save_array(path, apply_normalisation(np.asarray(raw), stats))
            stale = re.compile(re.escape(case.name) + r"\.[0-9a-f]{12}\.npy")
            for old in target.iterdir():
                if old != path and stale.fullmatch(old.name):
                    old.unlink(missing_ok=True)
        release_pages(raw)
        release_pages(case.labels)
        case.image = np.load(path, mmap_mode="r", allow_pickle=False)


#: Fewer labelled cases than this are each cut into train / validation / test slabs.
MIN_CASES_TO_SPLIT = 3


def _parts(cases: Sequence[Case], split: dict[str, Any], which: str) -> list[tuple[Case, tuple[slice, ...]]]:
    """(case, region) pairs of part ``which`` of ``split``: whole cases, or a slab of every case."""
    by_name = {c.name: c for c in cases}
    if split["kind"] == "slabs":
        axis = split["axis"]
        if "cases" in split:  # a dataset folder of one or two cases: a slab of each
            return [(by_name[n], slab_index(b[which], axis)) for n, b in split["cases"].items()]
        return [(cases[0], slab_index(split[which], axis))]
    return [(by_name[n], (slice(None),) * 3) for n in split[which]]


def _slab_split(cases: Sequence[Case], fractions: Sequence[float], path: Path) -> dict[str, Any]:
    """Too few cases to split by case: cut every case into train, validation and test slabs along Z.

    Each part then holds a slab of every case, disjoint from the other parts, so training,
    checkpoint choice and the test score still use separate voxels (as for the embedded
    volumes); the test slabs are scored on the working grid.
    """
    try:
        bounds = {c.name: split_slabs(c.shape, 0, fractions) for c in cases}
    except SplitError as err:
        raise DatasetError(path, f"{len(cases)} case(s) are split into slabs along Z, but {err}") from None
    return {"kind": "slabs", "axis": 0, "cases": bounds}


def _case_split(
    override: Any, names: list[str], seed: int, fractions: Sequence[float], path: Path
) -> dict[str, Any]:
    if override is None:
        try:
            return {"kind": "cases", "seed": seed, **split_cases(names, seed, fractions)}
        except SplitError as err:
            raise DatasetError(path, str(err)) from None
    if not isinstance(override, dict) or set(override) != set(PARTS):
        raise DatasetError(path, f"'split' must map each of {PARTS} to a list of case names")
    listed = [n for part in PARTS for n in override[part]]
    unknown = sorted(set(listed) - set(names))
    if unknown or len(set(listed)) != len(listed) or not all(override[p] for p in PARTS):
        raise DatasetError(
            path,
            f"'split' must give every part at least one case, each case once, from {names}; "
            f"unknown: {unknown}",
        )
    return {"kind": "cases", "seed": None, **{p: sorted(override[p]) for p in PARTS}}


def _embedded(
    name: str, seed: int, fractions: Sequence[float], sandstone_shape: Sequence[int], brain_zoom: float
) -> Dataset:
    """An embedded demo as a :class:`Dataset` of several generated cases, split by case.

    The sandstone: :func:`helpers.demos.make_sandstone_cores` of ``sandstone_shape``; the
    brain: :func:`helpers.demos.make_brain_subjects` at ``brain_zoom``. Every case keeps
    its own grid (no resampling); the normalisation is fitted on the training cases.
    """
    from helpers.demos import make_brain_subjects, make_sandstone_cores

    if name == "sandstone":
        made, affine = make_sandstone_cores(sandstone_shape, seed=seed), np.eye(4)
        classes, modality = SANDSTONE_CLASSES, "other"
    else:
        made, affine = make_brain_subjects(brain_zoom, seed=seed)
        classes, modality = BRAIN_CLASSES, "MR"
    split = {"kind": "cases", "seed": seed, **split_cases([c.name for c in made], seed, fractions)}
    train = [c for c in made if c.name in split["train"]]
    stats = fit_normalisation([c.image for c in train], [c.labels for c in train], modality, seed)
    spacing = ras_spacing(affine)
    cases, case_stats = [], {}
    for made_case in made:
        shape = made_case.image.shape
        same = np.array([[0, 1], [1, 1], [2, 1]])  # no reorientation, no resampling
        record = Resampling(shape, affine.copy(), same, shape, shape, affine.copy())
        image = apply_normalisation(made_case.image, stats)
        cases.append(Case(made_case.name, image, made_case.labels, record))
        case_stats[made_case.name] = case_statistics(made_case.image, made_case.labels, spacing, len(classes))
    return Dataset(
        name,
        modality,
        classes,
        [[i] for i in range(len(classes))],
        cases,
        split,
        stats,
        spacing,
        [],
        None,
        name,
        case_stats=case_stats,
        spacing_source="embedded",
    )


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
