"""Datasets as the course uses them: :func:`open_dataset` gives a :class:`Dataset` of
:class:`Case` objects, aligned, resampled, normalised and split.

The stages live in their own modules, in the order they run: :mod:`helpers.dataset_folder`
(the layout and ``dataset.json``), :mod:`helpers.preprocessor` (each case into the cache),
:mod:`helpers.planning` (fingerprint and plan, called by :func:`helpers.experiment.prepare`),
and the split here; :mod:`helpers.embedded` and :mod:`helpers.demos` make the embedded data.
Every name that used to live here is still importable from here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers.case_cache import (
    MappedArrays,
    cache_folder,
    open_case,
)
from helpers.config import DATASETS

# Importable from here as before (notebooks, tests and older code use these paths).
from helpers.dataset_folder import (  # noqa: E402, F401
    CHANNEL_PATTERN,
    FOLDER_NAME,
    NNUNET_OPTIONAL,
    NNUNET_REQUIRED,
    VOLUME_SUFFIXES,
    DatasetError,
    check_channel_count,
    check_declared_ids_present,
    check_training_count,
    dataset_name,
    folder_fingerprint,
    image_entries,
    label_entries,
    listed_entries,
    load_channels,
    native_spacing,
    read_channels,
    read_labels,
    read_spec,
    training_sources,
    unlabelled_scans,
    volume_files,
    volume_stem,
)
from helpers.embedded import (  # noqa: E402, F401
    BRAIN_CLASSES,
    CORES,
    CORES_LABELS,
    CORES_TEST,
    SANDSTONE_CLASSES,
    SANDSTONE_LEVELS,
    EmbeddedVolume,
    brain_template,
    load_brain_mri,
    load_dataset,
    make_cores_dataset,
    make_sandstone,
    write_sandstone_zarr,
    zoom_with_affine,
)
from helpers.geometry import Resampling, check_spacing, ras_spacing
from helpers.label_maps import read_label_map, remap_to_classes  # noqa: F401  (remap_to_classes: old path)
from helpers.planning import case_statistics
from helpers.preprocessing import apply_normalisation, fit_normalisation
from helpers.preprocessor import (  # noqa: E402, F401  # noqa: E402
    CACHE_ENV,
    PARALLEL_BYTES,
    CaseJob,
    default_cache,
    normalise_cached,
    preprocess_cases,
)
from helpers.splits import FRACTIONS, PARTS, SplitError, slab_index, split_cases, split_slabs
from helpers.volume import VolumeError


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
    spec = read_spec(spec_path)
    name = dataset_name(spec, root, spec_path)
    channels = read_channels(spec, spec_path)
    modality: str | list[str] = channels[0][1] if len(channels) == 1 else [m for _, m in channels]
    class_names, label_ids = read_labels(spec, spec_path)
    images, label_files = training_sources(spec, root, spec_path)
    sources = {stem: ([str(p) for p in images[stem]], str(label_files[stem])) for stem in sorted(images)}
    spacing, spacing_source = _target_spacing(target_spacing, spec, spec_path, sources)
    key = {"root": str(root.resolve()), "spacing": spacing, "labels": label_ids, "channels": len(channels)}
    key["stats"] = 1  # metas hold each case's statistics (helpers.planning)
    folder = cache_folder(Path(cache) if cache is not None else default_cache(), name, key)
    metas = preprocess_cases(folder, sources, len(channels), label_ids, spacing, workers, progress)
    present = set().union(*(m["stored_ids"] for m in metas.values()))
    check_declared_ids_present(present, class_names, label_ids, spec_path)
    cases = _open_cases(folder, metas, sources)
    if len(cases) < MIN_CASES_TO_SPLIT and spec.get("split") is None:
        split = _slab_split(cases, fractions, spec_path)
    else:
        split = _case_split(spec.get("split"), [c.name for c in cases], seed, fractions, spec_path)
    stats = _fit_and_normalise(folder, cases, metas, split, modality, seed)
    files = [*(p for paths in images.values() for p in paths), *label_files.values()]
    return Dataset(
        name,
        modality,
        class_names,
        label_ids,
        cases,
        split,
        stats,
        spacing,
        unlabelled_scans(spec, root, spec_path),
        str(root),
        folder_fingerprint(spec, files),
        tuple(n for n, _ in channels),
        str(folder),
        {stem: meta["stats"] for stem, meta in metas.items()},
        spacing_source,
    )


def _target_spacing(
    given: Sequence[float] | None, spec: dict[str, Any], spec_path: Path, sources: dict[str, Any]
) -> tuple[tuple[float, float, float], str]:
    """The working spacing (Z, Y, X mm) and where it came from: the argument, ``dataset.json``, or
    the median of the cases' native spacings (read from headers where the format allows)."""
    source = "argument" if given is not None else "median"
    if given is None and spec.get("target_spacing") is not None:
        given, source = spec["target_spacing"], "dataset.json"
    if given is not None:
        try:
            return tuple(float(s) for s in check_spacing(given)), source  # type: ignore[return-value]
        except VolumeError as err:
            raise DatasetError(spec_path, f"target_spacing {err.reason}") from None
    spacings = [native_spacing(paths[0], stem) for stem, (paths, _) in sources.items()]
    return tuple(float(np.median([s[i] for s in spacings])) for i in range(3)), source  # type: ignore[return-value]


def _open_cases(folder: Path, metas: dict[str, dict[str, Any]], sources: dict[str, Any]) -> list[Case]:
    """Every preprocessed case of the cache ``folder`` as a :class:`Case` of memory maps."""
    cases = []
    for stem, meta in metas.items():
        raw, labels, candidates = open_case(folder / "cases" / stem)
        record = Resampling.from_json(meta["resampling"])
        paths = tuple(sources[stem][0])
        cases.append(
            Case(stem, raw, labels, record, meta["image_path"], meta["labels_path"], candidates, paths)
        )
    return cases


def _fit_and_normalise(
    folder: Path,
    cases: list[Case],
    metas: dict[str, dict[str, Any]],
    split: dict[str, Any],
    modality: str | list[str],
    seed: int,
) -> dict[str, Any]:
    """Fit the normalisation on the training part alone, then point every case at its normalised copy."""
    train = _parts(cases, split, "train")
    regions = [r for _, r in train]
    images_tr, labels_tr = (
        MappedArrays([folder / "cases" / c.name / f"{what}.npy" for c, _ in train], regions)
        for what in ("image", "labels")
    )
    stats = fit_normalisation(images_tr, labels_tr, modality, seed)
    normalise_cached(folder, cases, metas, stats)
    return stats


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
