"""Preprocessing a folder's cases into the cache: load, check, read the labels, measure
(:func:`helpers.planning.case_statistics`), reorient and resample, in worker processes; then
the normalised copies. nnU-Net's ``DefaultPreprocessor.run_case``, one case per job.

Step order for one case (:func:`preprocess_case`): channels loaded and checked, label map read
by :func:`helpers.label_maps.read_label_map`, statistics taken on the native grid, image and
labels brought to the working grid (RAS, target spacing), foreground candidates kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helpers.case_cache import (
    CANDIDATES_PER_CLASS,
    CacheError,
    class_candidates,
    is_complete_npy,
    read_case,
    save_array,
    source_stamp,
    worker_count,
    write_case,
)
from helpers.case_cache import build_cases as _build_cases
from helpers.checks import check_image
from helpers.config import OUTPUTS
from helpers.dataset_folder import DatasetError, check_channel_count, load_channels
from helpers.geometry import reorient, to_working_grid
from helpers.label_maps import read_label_map
from helpers.memory import release_pages
from helpers.planning import case_statistics
from helpers.preprocessing import apply_normalisation
from helpers.volume import Volume, VolumeError

#: Where folder datasets are preprocessed when ``open_dataset`` gets no ``cache``.
CACHE_ENV = "HELPERS_CACHE_DIR"


def default_cache() -> Path:
    """``$HELPERS_CACHE_DIR`` if set, else ``outputs/preprocessed`` in the course folder."""
    return Path(os.environ.get(CACHE_ENV) or OUTPUTS / "preprocessed")


@dataclass(frozen=True)
class CaseJob:
    """One case to preprocess into ``folder`` (picklable, for a worker process)."""

    name: str
    images: tuple[str, ...]
    labels: str
    folder: str
    n_channels: int
    label_ids: tuple[tuple[int, ...], ...]
    target_spacing: tuple[float, float, float]


def preprocess_case(job: CaseJob) -> dict[str, Any] | tuple[str, str | None, str]:
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


def preprocess_cases(
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
            jobs.append(CaseJob(stem, tuple(image_paths), labels_path, str(where), n_channels, ids, spacing))  # type: ignore[arg-type]
    if workers is None:
        size = sum(e[1] for job in jobs for e in source_stamp([*job.images, job.labels]))
        workers = worker_count(len(jobs), None) if size >= PARALLEL_BYTES else 1
    results = _build_cases(preprocess_case, jobs, worker_count(len(jobs), workers), progress=progress)
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, tuple):
            kind, path, reason = result
            if kind == CacheError.__name__:
                raise CacheError(path, reason)
            raise DatasetError(path, f"case {job.name!r}: {reason}")
        metas[job.name] = result
    return {stem: metas[stem] for stem in sources}


def normalise_cached(
    folder: Path, cases: Sequence[Any], metas: dict[str, dict[str, Any]], stats: dict[str, Any]
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
