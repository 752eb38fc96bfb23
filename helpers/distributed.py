"""Blockwise prediction of zarr volumes on Dask: beyond memory, and beyond one machine.

:func:`predict_zarr` gives every chunk of the output array to a Dask task. The task reads
from the input store only what the windows touching its chunk need (the chunk plus a halo
of up to one patch), predicts those windows with the course's Gaussian blending on the
grid of the *whole* volume, and writes its own chunk. The values are exactly those of
in-memory :func:`helpers.inference.predict_volume`: each voxel sums the same window
predictions in the same order. Tasks share nothing but the stores, so no locks are
needed, and a chunk that is written is marked complete: a rerun after a crash or a killed
worker does only the chunks that are missing.

Dask is the engine, never a home-made scheduler: by default a ``LocalCluster`` (one worker
process per GPU, or per CPU core, each with one thread), or any cluster through
``client=``. Each worker loads the model once, from the run folder; the model itself is
never pickled into the task graph.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.files import write_text_atomic
from helpers.patches import as_patch_shape, check_overlap
from helpers.stitching import check_label_dtype, label_dtype
from helpers.volume import VolumeError
from helpers.zarr_volumes import create_zarr_volume, open_zarr_volume, zarr_affine

PROGRESS_SUFFIX = ".progress"


class ModelSpecError(ValueError):
    """``model`` names no usable model: not a run folder, a .keras file or 'module:factory'."""


def _model_source(model: Any) -> tuple[str | None, dict[str, Any]]:
    """(a spec string that workers can load, the run's model.json or {}) for ``model``."""
    if callable(model) and not isinstance(model, (str, os.PathLike)):
        return None, {}
    text = os.fspath(model)
    path = Path(text)
    if path.is_dir():
        if not (path / "best.keras").is_file():
            raise ModelSpecError(f"{path}: no best.keras in this run folder (has the training finished?)")
        info_path = path / "model.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        return str(path.resolve() / "best.keras"), info
    if path.suffix == ".keras":
        if not path.is_file():
            raise ModelSpecError(f"{path}: no such model file")
        return str(path.resolve()), {}
    if ":" in text and not path.exists():
        return text, {}
    raise ModelSpecError(
        "model must be a run folder (with best.keras), a .keras file, 'module:factory' "
        f"or a callable; got {text!r}"
    )


@functools.lru_cache(maxsize=2)
def load_worker_model(spec: str) -> Any:
    """Load the model named by ``spec`` once per process (a .keras file or 'module:factory')."""
    if spec.endswith(".keras"):
        from helpers.model import load_model

        return load_model(spec)
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ModelSpecError(f"cannot import the model factory {spec!r}: {err}") from None
    return factory()


def chunk_regions(
    shape: Sequence[int], chunks: Sequence[int]
) -> list[tuple[tuple[int, int, int], tuple[slice, ...]]]:
    """(chunk index, region) of every chunk of a (Z, Y, X) grid, in z-major order."""
    ranges = [range(math.ceil(s / c)) for s, c in zip(shape[:3], chunks[:3], strict=True)]
    out = []
    for idx in np.ndindex(*(len(r) for r in ranges)):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape, strict=False))
        out.append((tuple(int(i) for i in idx), region))
    return out


def _check_chunks(
    chunks: Sequence[int], shape: Sequence[int], patch: tuple[int, int, int], overlap: float
) -> None:
    """Refuse output chunks smaller than the patch: each would redo most of its windows' work."""
    stride = [max(1, int(p * (1 - overlap))) for p in patch]
    small = [i for i in range(3) if chunks[i] < min(patch[i], shape[i])]
    if small:
        suggestion = tuple(
            int(max(math.ceil(max(c, p) / st) * st, p)) if i in small else int(c)
            for i, (c, p, st) in enumerate(zip(chunks[:3], patch, stride, strict=True))
        )
        raise ValueError(
            f"output chunks {tuple(chunks[:3])} are smaller than the patch {patch} along axis "
            f"{', '.join('ZYX'[i] for i in small)}; every chunk would repeat the work of the windows "
            f"around it. Use chunks of at least the patch, a multiple of the stride {tuple(stride)}: "
            f"the nearest valid is {suggestion}"
        )


def _fingerprint(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


class NormalisedVolume:
    """A read-only view of a volume that normalises whatever is read from it (float32)."""

    def __init__(self, array: Any, stats: dict[str, Any]) -> None:
        self.array, self.stats = array, stats
        self.shape, self.ndim, self.dtype = tuple(array.shape), len(array.shape), np.dtype(np.float32)
        self.chunks = getattr(array, "chunks", None)

    def __getitem__(self, key: Any) -> np.ndarray:
        from helpers.preprocessing import apply_normalisation

        return apply_normalisation(np.asarray(self.array[key]), self.stats)


def volume_normalisation(
    source: Any, stats: dict[str, Any] | None, channel: int | None = None
) -> dict[str, Any] | None:
    """The run's normalisation made chunk-local: a per-case z-score gets the whole volume's
    mean and standard deviation, computed chunk by chunk with dask.array; a (Z, Y, X, C)
    volume's channels each get their own (``channel`` picks one)."""
    if stats and stats.get("scheme") == "per-channel":
        per = [volume_normalisation(source, s, c) for c, s in enumerate(stats["channels"])]
        return {"scheme": "per-channel", "channels": per}
    if not stats or stats.get("scheme") != "zscore-per-case":
        return stats
    import dask
    import dask.array as da

    x = da.from_zarr(source)
    x = (x if channel is None else x[..., channel]).astype(np.float64)
    mean, std = dask.compute(x.mean(), x.std(), scheduler="threads")
    return {"scheme": "zscore-fixed", "mean": float(mean), "std": float(std), "from": "zscore-per-case"}


_MODEL_RSS: dict[str, int] = {}


@functools.lru_cache(maxsize=1)
def _worker_gpu() -> bool:
    from helpers.config import gpu_visible

    return gpu_visible()


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _predict_chunk(
    task: dict[str, Any], index: tuple[int, int, int], region: tuple[slice, ...], model: Any = None
) -> dict[str, Any]:
    """Predict one output chunk, write it, mark it complete. Runs on a worker."""
    from helpers.inference import predict_volume

    start = time.perf_counter()
    if model is None:
        model = load_worker_model(task["model"])
        _MODEL_RSS.setdefault(task["model"], _rss("VmRSS"))
    source = open_zarr_volume(task["input"])
    if task["normalisation"]:
        source = NormalisedVolume(source, task["normalisation"])
    target = open_zarr_volume(task["output"], mode="r+")
    result = predict_volume(
        model,
        source,
        task["patch"],
        task["overlap"],
        task["batch_size"],
        task["blend"],
        task["output_kind"],
        progress=False,
        tta=task["tta"],
        threads=task["threads"],
        pipeline=_worker_gpu() if task["pipeline"] is None else task["pipeline"],
        region=region,
    )
    if not np.can_cast(result.dtype, target.dtype):  # labels of over 256 classes: never wrap them
        check_label_dtype(target.dtype, int(result.max()), task["output"])
    target[region] = result.astype(target.dtype, copy=False)
    write_text_atomic(Path(task["progress"]) / "_".join(map(str, index)), "")
    return {
        "index": index,
        "seconds": time.perf_counter() - start,
        "pid": os.getpid(),
        "peak_rss": _rss("VmHWM"),
        "model_rss": _MODEL_RSS.get(task["model"], 0),
    }


def predict_zarr(
    model: Any,
    input_zarr: str | os.PathLike[str],
    output_zarr: str | os.PathLike[str],
    client: Any = None,
    patch_size: int | Sequence[int] | None = None,
    overlap: float = 0.5,
    batch_size: int = 2,
    blend: str = "gaussian",
    output: str = "labels",
    chunks: int | Sequence[int] | None = None,
    tta: str | None = None,
    n_classes: int | None = None,
    n_workers: int | None = None,
    progress: bool = True,
    normalise: bool = True,
    pipeline: bool | None = None,
) -> dict[str, Any]:
    """Predict a zarr volume chunk by chunk on Dask, writing a zarr volume of the same grid.

    Parameters
    ----------
    model : run folder, ``.keras`` file, ``"module:factory"`` or callable
        A run folder (``best.keras`` and ``model.json``, which also give the patch size
        and classes) or a model file is loaded once by each worker. A ``"module:factory"``
        string names a function, importable on the workers, that returns the model. A
        callable (a Keras model in memory, say) cannot travel to other processes: it runs
        on Dask's thread scheduler in this process.
    input_zarr : path
        A (Z, Y, X) zarr volume (:func:`helpers.zarr_volumes.convert_to_zarr` makes one).
    output_zarr : path
        Created if missing, with the input's affine; ``(Z, Y, X)`` labels (uint8, or int32
        for over 256 classes: :func:`helpers.stitching.label_dtype`) or ``(Z, Y, X, n_classes)``
        float32 probabilities. An existing store must match, its integer dtype wide enough
        for the classes (a label that does not fit is refused, never wrapped).
    client : dask.distributed.Client, optional
        Any cluster. By default a LocalCluster of ``n_workers`` processes, one task at a
        time each, whose TensorFlow shares the cores out (:func:`worker_threads_env`) and
        whose workers write what they print to ``<output_zarr>.workers.log``.
    patch_size, overlap, batch_size, blend, output, tta
        As for :func:`helpers.inference.predict_volume`.
    chunks : int or 3 ints, optional
        Output chunk size for a new output store, at least the patch (default: the
        input's chunks, raised to the patch). Each task predicts one chunk.
    n_classes : int, optional
        Needed only for probabilities when no run folder says it.
    n_workers : int, optional
        Worker processes of the default cluster: one per GPU, else one per core (at most 8).
    normalise : bool
        Apply the run's intensity normalisation (``model.json``) to what each task reads;
        a per-case z-score uses the whole volume's statistics, computed chunk by chunk.
        The input must already be on the model's working grid (orientation, spacing).
    pipeline : bool, optional
        Overlap cutting, the model and stitching inside each task. By default only on
        workers that see a GPU: on CPU workers the extra threads compete with the other
        workers for the cores (one thread per task was 11 % faster at 512^3 on 2 cores).

    Returns
    -------
    dict
        ``chunks`` (total), ``computed`` and ``skipped`` (already complete), ``windows``
        computed against ``grid_windows`` of the whole volume (the halo overhead), ``seconds``,
        ``worker_peak_rss`` (bytes, the largest worker high-water mark) and
        ``worker_model_rss`` (a worker's resident memory once its model was loaded).
    """
    from helpers.patches import sliding_windows

    spec, info = _model_source(model)
    patch, overlap = _check_options(info, patch_size, overlap, output, client, spec)
    source, shape = _open_source(input_zarr, patch)
    classes = n_classes or len(info.get("class_names", [])) or None
    if chunks is not None:
        chunks = [chunks] * 3 if isinstance(chunks, (int, np.integer)) else list(chunks)
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != 3:
            raise ValueError(f"chunks must be an int or 3 ints (Z, Y, X), got {chunks!r}")
        _check_chunks(chunks, shape, patch, overlap)
    target = _open_or_create_output(
        output_zarr, shape, output, chunks or source.chunks, patch, classes, source
    )
    out_chunks = tuple(int(c) for c in target.chunks[:3])
    _check_chunks(out_chunks, shape, patch, overlap)
    normalisation = volume_normalisation(source, info.get("normalisation")) if normalise else None
    params = {
        "model": spec or repr(type(model)),
        "model_version": _model_version(spec),
        "normalisation": normalisation,
        "input": str(Path(input_zarr).resolve()),
        "patch": list(patch),
        "overlap": overlap,
        "blend": blend,
        "output_kind": output,
        "tta": tta,
        "chunks": list(out_chunks),
    }
    progress_dir = Path(f"{Path(output_zarr).resolve()}{PROGRESS_SUFFIX}")
    done_before = _read_progress(progress_dir, target, params)
    regions = chunk_regions(shape, out_chunks)
    todo = [(idx, r) for idx, r in regions if "_".join(map(str, idx)) not in done_before]
    task = dict(
        params,
        model=spec,
        output=str(Path(output_zarr).resolve()),
        batch_size=int(batch_size),
        threads=1,
        pipeline=pipeline,
        progress=str(progress_dir),
    )
    start = time.perf_counter()
    results = _run(task, todo, model if spec is None else None, client, n_workers, progress)
    target.attrs["predict_zarr"] = dict(params, complete=True)
    shutil.rmtree(progress_dir, ignore_errors=True)
    from helpers.inference import region_windows

    windows = sum(len(region_windows(shape, r, patch, overlap)[0]) for _, r in todo)
    return {
        "chunks": len(regions),
        "computed": len(results),
        "skipped": len(regions) - len(todo),
        "windows": windows,
        "grid_windows": len(sliding_windows(shape, patch, overlap)),
        "seconds": time.perf_counter() - start,
        "workers": sorted({r["pid"] for r in results}),
        "worker_peak_rss": max((r["peak_rss"] for r in results), default=0),
        "worker_model_rss": max((r["model_rss"] for r in results), default=0),
    }


def _check_options(
    info: dict[str, Any], patch_size: Any, overlap: float, output: str, client: Any, spec: str | None
) -> tuple[tuple[int, int, int], float]:
    """:func:`predict_zarr`'s options checked: the patch (from ``model.json`` if not given) and overlap."""
    if patch_size is None:
        if "patch_size" not in info:
            raise ValueError("patch_size is needed: the model is not a run folder whose model.json gives it")
        patch_size = info["patch_size"]
    if output not in ("labels", "probabilities"):
        raise ValueError(f"output must be 'labels' or 'probabilities', got {output!r}")
    if client is not None and spec is None:
        raise ModelSpecError(
            "a model in memory cannot be sent to a cluster: pass its run folder or .keras file"
        )
    return as_patch_shape(patch_size), check_overlap(overlap)


def _open_source(
    input_zarr: str | os.PathLike[str], patch: tuple[int, int, int]
) -> tuple[Any, tuple[int, ...]]:
    """The input store and its (Z, Y, X) shape; refused when every task would have to read it whole."""
    source = open_zarr_volume(input_zarr)
    if len(source.shape) not in (3, 4) or (len(source.shape) == 4 and source.chunks[3] != source.shape[3]):
        raise VolumeError(
            input_zarr,
            f"has shape {source.shape} and chunks {source.chunks}; predict_zarr takes a (Z, Y, X) volume "
            "or a (Z, Y, X, C) one whose channels lie in one chunk",
        )
    shape = tuple(int(s) for s in source.shape[:3])
    if tuple(source.chunks[:3]) == shape and math.prod(shape) > math.prod(patch) * 8:
        raise VolumeError(
            input_zarr,
            f"is stored as one chunk of {shape}: every task would read and decompress the whole "
            "volume. Rewrite it with spatial chunks, e.g. convert_to_zarr(..., chunks=64)",
        )
    return source, shape


def _model_version(spec: str | None) -> str | None:
    """A model file's size and time: a retrained model is a different prediction."""
    if spec is None or not spec.endswith(".keras"):
        return None
    stat = Path(spec).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _open_or_create_output(
    path: Any,
    shape: tuple[int, ...],
    output: str,
    chunks: Any,
    patch: tuple[int, int, int],
    n_classes: int | None,
    source: Any,
) -> Any:
    path = Path(path)
    if path.exists():
        target = open_zarr_volume(path, mode="r+")
        kind = np.dtype(target.dtype).kind
        want = (
            shape
            if output == "labels"
            else (*shape, n_classes or (target.shape[-1] if len(target.shape) == 4 else 0))
        )
        good_dtype = kind in "iu" if output == "labels" else np.dtype(target.dtype) == np.float32
        if tuple(target.shape) != tuple(want) or not good_dtype:
            raise VolumeError(
                path,
                f"has shape {target.shape} and dtype {target.dtype}; output={output!r} of this input needs "
                f"shape {want} and {'an integer dtype' if output == 'labels' else 'float32'}",
            )
        if output == "labels" and n_classes:
            check_label_dtype(target.dtype, n_classes - 1, str(path))
        if getattr(target, "shards", None) is not None:
            raise VolumeError(
                path, "is sharded: tasks would write the same shard files; use an unsharded array"
            )
        return target
    chunks = tuple(max(int(c), min(p, s)) for c, p, s in zip(chunks[:3], patch, shape, strict=True))
    if output == "labels":
        return create_zarr_volume(path, shape, label_dtype(n_classes or 1), chunks, zarr_affine(source))
    if not n_classes:
        raise ValueError("n_classes is needed to create a probabilities output (no run folder gives it)")
    return create_zarr_volume(path, (*shape, n_classes), np.float32, chunks, zarr_affine(source))


def _read_progress(progress_dir: Path, target: Any, params: dict[str, Any]) -> set[str]:
    """Names of the chunks already complete for this same prediction; empty for a fresh one."""
    stamp = progress_dir / "params.json"
    finished = target.attrs.get("predict_zarr")
    if (
        finished
        and finished.get("complete")
        and _fingerprint({k: v for k, v in finished.items() if k != "complete"}) == _fingerprint(params)
    ):
        return {"_".join(map(str, idx)) for idx, _ in chunk_regions(target.shape, target.chunks)}
    if progress_dir.is_dir() and stamp.is_file():
        if json.loads(stamp.read_text()).get("fingerprint") != _fingerprint(params):
            raise VolumeError(
                progress_dir,
                "holds the progress of a different prediction (model, input or settings) into this "
                "output; delete the output and this folder to start again",
            )
        return completed_chunks(progress_dir)
    progress_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, json.dumps({"fingerprint": _fingerprint(params), "params": params}))
    return set()


def completed_chunks(progress_dir: str | os.PathLike[str]) -> set[str]:
    """Names (``"z_y_x"`` chunk indices) of the chunks marked complete in ``progress_dir``."""
    folder = Path(progress_dir)
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir() if re.fullmatch(r"\d+_\d+_\d+", p.name)}


def default_workers() -> int:
    """One worker per GPU, else one per CPU core (at most 8)."""
    from helpers.model import gpu_count

    return gpu_count() or max(1, min(8, os.cpu_count() or 1))


def worker_threads_env(n_workers: int, gpus: int | None = None) -> dict[str, str]:
    """Environment for ``n_workers`` TensorFlow worker processes on this machine's CPU cores.

    Each worker's TensorFlow otherwise starts thread pools as wide as the machine, so
    two workers on 2 cores run four busy threads. On CPUs this gives each worker
    ``cores // n_workers`` intra-op threads (at least one) and one inter-op thread; with
    a GPU (``gpus`` > 0, by default :func:`helpers.model.gpu_count`) it returns ``{}``.
    Measured by ``benchmarks/zarr_threads.py`` (``docs/benchmarks.md``).
    """
    if gpus is None:
        from helpers.model import gpu_count

        gpus = gpu_count()
    if gpus:
        return {}
    from helpers.config import usable_cores

    threads = max(1, usable_cores() // max(1, n_workers))
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"}


def _run(
    task: dict[str, Any],
    todo: list[tuple[tuple[int, int, int], tuple[slice, ...]]],
    local_model: Any,
    client: Any,
    n_workers: int | None,
    progress: bool,
) -> list[dict[str, Any]]:
    import dask

    if not todo:
        return []
    if local_model is not None:  # in memory: threads in this process, nothing pickled
        tasks = [dask.delayed(_predict_chunk, pure=False)(task, i, r, local_model) for i, r in todo]
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar():
                return list(dask.compute(*tasks, scheduler="threads", num_workers=n_workers or 1))
        return list(dask.compute(*tasks, scheduler="threads", num_workers=n_workers or 1))
    if client is None:
        from distributed import Client, LocalCluster

        workers = n_workers or default_workers()
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                env=worker_threads_env(workers),
                processes=True,
                dashboard_address=":0",
                silence_logs=40,
            ) as cluster,
            Client(cluster) as own,
        ):
            own.run(_log_to_file, f"{task['output']}.workers.log")
            return _submit(own, task, todo, progress)
    return _submit(client, task, todo, progress)


def _log_to_file(path: str) -> None:
    """On a worker of our own cluster: send its stdout and stderr (TensorFlow's start-up
    chatter, library prints) to ``path`` instead of the notebook or terminal."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _submit(client: Any, task: dict[str, Any], todo: list, progress: bool) -> list[dict[str, Any]]:
    if progress and importlib.util.find_spec("bokeh") is not None:  # the dashboard needs bokeh
        print(f"Dask dashboard: {client.dashboard_link}")
    futures = [client.submit(_predict_chunk, task, i, r, pure=False) for i, r in todo]
    if progress and futures:  # tqdm, as predict_volume: distributed's own bar showed nothing in a notebook
        from distributed import as_completed
        from tqdm.auto import tqdm

        for _ in tqdm(as_completed(futures), total=len(futures), desc="predict_zarr", unit="chunk"):
            pass
    return client.gather(futures)
