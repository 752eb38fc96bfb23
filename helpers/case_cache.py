"""Cases preprocessed once, to disk, and read back as memory maps.

A dataset folder's scans are reoriented, resampled and remapped once
(:func:`helpers.datasets.open_dataset` says how); this module keeps the result, as
nnU-Net's ``nnUNet_preprocessed`` does, so that neither a second run nor training holds
the dataset in memory:

- one folder per case, ``cases/<name>/``, with ``image.npy`` (float32, the working grid,
  not normalised), ``labels.npy`` (class indices), ``candidates.npz`` (up to
  :data:`CANDIDATES_PER_CLASS` voxels of each class, for foreground oversampling) and
  ``meta.json`` (the source files' sizes and modification times, the geometry);
- written under a temporary name and renamed, so a preprocessing cut off mid-write
  leaves nothing that looks finished, and resumes with the cases it had not finished;
- reused while the source files are unchanged and :data:`CACHE_VERSION` matches,
  rebuilt when they are not;
- built in worker processes (:func:`build_cases`), never more than the machine's cores.

:func:`helpers.io.release_pages` drops the pages of a memory map that reading touched from the
process's resident memory (the kernel keeps them in its page cache), so sampling
patches from 41 cases costs no more memory than from 5.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.config import usable_cores
from helpers.files import SLOW_WRITE_ENV, atomic_path

#: Bump when what a cached case holds or how it is computed changes: older caches are rebuilt.
from helpers.memory import release_pages
from helpers.volume import VolumeError

CACHE_VERSION = 1
#: Voxels kept per class and case for foreground oversampling (nnU-Net keeps 10,000).
CANDIDATES_PER_CLASS = 10_000
#: Candidate centre voxels kept per class and case when sampling computes them (subsampled above it).
MAX_CANDIDATES = 500_000
#: Disk errors that mean "no room left": a full disk, a quota, a file-size limit.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_TMP_DIR = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.partial$")


class CacheError(VolumeError):
    """A preprocessed-case folder that cannot be written (full disk, permissions); names the folder."""


def class_candidates(
    labels: np.ndarray,
    classes: Sequence[int],
    limit: int = MAX_CANDIDATES,
    seed: int = 0,
    chunk: int = 16,
) -> dict[int, np.ndarray]:
    """Flat indices (int64, sorted) of the voxels of each class in ``classes``, at most ``limit`` each.

    Reads ``labels`` (an array or memmap) ``chunk`` Z slices at a time, dropping a
    memmap's pages after each, so a large memmap is never in memory whole. Above
    ``limit`` each chunk keeps its share of the class, drawn at random with ``seed``.
    Classes with no voxel are left out.
    """
    plane = int(np.prod(labels.shape[1:]))
    starts = range(0, labels.shape[0], chunk)
    counts: dict[int, list[int]] = {c: [] for c in classes}
    for z in starts:
        block = np.asarray(labels[z : z + chunk])
        for c in classes:
            counts[c].append(int(np.count_nonzero(block == c)))
        release_pages(labels)  # after the last use of the block, a view into a memory map
    rng = np.random.default_rng([seed, 2**31])
    parts: dict[int, list[np.ndarray]] = {c: [] for c in classes if sum(counts[c])}
    for i, z in enumerate(starts):
        wanted = [c for c in parts if counts[c][i]]
        if not wanted:
            continue
        flat = np.asarray(labels[z : z + chunk]).ravel()
        for c in wanted:
            idx = np.flatnonzero(flat == c) + z * plane
            total = sum(counts[c])
            if total > limit:
                idx = np.sort(rng.choice(idx, round(limit * counts[c][i] / total), replace=False))
            parts[c].append(idx)
        release_pages(labels)
    return {c: np.concatenate(p) for c, p in parts.items() if sum(len(a) for a in p)}


def cache_folder(root: str | os.PathLike[str], name: str, key: dict[str, Any]) -> Path:
    """``root/<name>-<hash of key and CACHE_VERSION>``: one folder per dataset and preprocessing."""
    text = json.dumps({**key, "version": CACHE_VERSION}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "dataset"
    return Path(root) / f"{safe}-{digest}"


def source_stamp(paths: Iterable[str | os.PathLike[str]]) -> list[list[Any]]:
    """[path, size in bytes, modification time in ns] of every file under ``paths`` (DICOM folders walked)."""
    stamp = []
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            stamp.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return stamp


def is_complete_npy(path: Path, shape: Sequence[int], dtype: str) -> bool:
    """True if ``path`` is a .npy of ``shape`` and ``dtype`` holding all the data its header declares."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            found_shape, _, found_dtype = reader[version](f)
            offset = f.tell()
        needed = offset + int(np.prod(found_shape, dtype=np.int64)) * found_dtype.itemsize
        return (
            list(found_shape) == list(shape) and str(found_dtype) == dtype and path.stat().st_size >= needed
        )
    except (OSError, ValueError, KeyError):
        return False


def read_case(folder: Path, sources: Sequence[str | os.PathLike[str]]) -> dict[str, Any] | None:
    """The ``meta.json`` of cached case ``folder`` if complete, current and from ``sources``, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("sources") != source_stamp(sources):
        return None
    arrays = meta.get("arrays", {})
    if set(arrays) != {"image", "labels"}:
        return None
    if not all(is_complete_npy(folder / f"{k}.npy", v["shape"], v["dtype"]) for k, v in arrays.items()):
        return None
    if not (folder / "candidates.npz").is_file():
        return None
    return meta


def _is_full(err: OSError) -> bool:
    """A full disk, a quota or a file-size limit; NumPy reports a refused write as a short one, no errno."""
    return err.errno in _NO_SPACE or (err.errno is None and "requested and" in str(err))


def _no_space(err: OSError, folder: Path, what: str) -> CacheError:
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return CacheError(
        folder,
        f"no room left to write {what} ({os.strerror(err.errno) if err.errno else err}; {free}). "
        "Free some disk space, "
        "or pass cache= a folder on a disk with room, and run again: finished cases are kept",
    )


def write_case(
    folder: Path, arrays: dict[str, np.ndarray], candidates: dict[int, np.ndarray], meta: dict[str, Any]
) -> dict[str, Any]:
    """Write one case into ``folder`` (``cases/<name>``) atomically; returns the meta written.

    The files go into a temporary sibling folder that is renamed onto ``folder`` once
    complete. If another process finished the same case first, its folder is kept.

    Raises
    ------
    CacheError
        The disk or a quota is full, or the folder cannot be written.
    """
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = f"cannot be created for the preprocessed cases: {err.strerror or err}"
        raise CacheError(parent, reason) from None
    remove_stale_folders(parent)
    meta = {
        **meta,
        "version": CACHE_VERSION,
        "id": uuid.uuid4().hex[:12],
        "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in arrays.items()},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", suffix=".partial", dir=parent))
    try:
        for key, array in arrays.items():
            np.save(tmp / f"{key}.npy", array, allow_pickle=False)
        np.savez(tmp / "candidates.npz", **{str(c): idx for c, idx in candidates.items()})
        (tmp / "meta.json").write_text(json.dumps(meta))
        delay = float(os.environ.get(SLOW_WRITE_ENV, "0") or 0)
        if delay > 0:  # fault-injection tests: a wider window for a kill mid-write
            time.sleep(delay)
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
    except OSError as err:
        if _is_full(err):
            raise _no_space(err, parent, f"preprocessed case {folder.name!r}") from None
        raise CacheError(parent, f"cannot write preprocessed case {folder.name!r}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def remove_stale_folders(parent: Path) -> list[Path]:
    """Delete the temporary case folders that killed writers left in ``parent``; returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(parent):
            match = _TMP_DIR.match(entry.name)
            if match is None or int(match["pid"]) == os.getpid():
                continue
            try:
                os.kill(int(match["pid"]), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def open_case(folder: Path) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """(image, labels) of a cached case as read-only memory maps, and its class candidates."""
    image = np.load(folder / "image.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
    with np.load(folder / "candidates.npz", allow_pickle=False) as npz:
        candidates = {int(k): npz[k] for k in npz.files}
    return image, labels, candidates


class MappedArrays(Sequence):
    """The regions of ``.npy`` files as a sequence of arrays, each opened as a fresh memory map when read.

    Iterating over it holds one file's pages at a time (a list of memory maps would keep
    every page it touched), e.g. for fitting a normalisation over many cases.
    """

    def __init__(self, paths: Sequence[Path], regions: Sequence[tuple[slice, ...]]) -> None:
        self.paths, self.regions = list(paths), list(regions)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return np.load(self.paths[i], mmap_mode="r", allow_pickle=False)[self.regions[i]]


def save_array(path: Path, array: np.ndarray) -> Path:
    """``np.save`` ``array`` to ``path`` atomically; a full disk raises :class:`CacheError` naming it."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    except OSError as err:
        if _is_full(err):
            raise _no_space(err, path.parent, path.name) from None
        raise CacheError(path, f"cannot be written: {err}") from None
    return path


def _call(job: tuple[Callable[..., Any], Any]) -> Any:
    fn, task = job
    return fn(task)


def worker_count(n_tasks: int, workers: int | None) -> int:
    """Processes to use for ``n_tasks``: ``workers`` if given, else the usable cores, at most ``n_tasks``."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1 or None, got {workers!r}")
        return max(1, min(workers, n_tasks))
    return max(1, min(usable_cores(), n_tasks))


def build_cases(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int = 1,
    desc: str = "preprocess",
    progress: bool = True,
) -> list[Any]:
    """``[fn(t) for t in tasks]``, in ``workers`` processes when more than one, with a progress bar.

    ``fn`` must be a module-level function (it is pickled to the workers), and should
    return its errors rather than raise them: an exception whose constructor takes
    other arguments than its message cannot travel back from a worker. Workers are
    started with ``forkserver`` (``spawn`` where that is missing), never forked from a
    process that may run TensorFlow's threads.
    """
    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=desc, unit="case", disable=not progress or not tasks)
    with bar:
        if workers <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = fn(task)
                bar.update()
            return results
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
            futures = {pool.submit(_call, (fn, task)): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    return results
