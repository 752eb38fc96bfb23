"""Whole-volume prediction: pipelined sliding-window inference with blended stitching.

:func:`predict_volume` never holds all patches in memory. Windows are cut in z-major
order into a small ring of batch buffers, fed to the model in batches of a fixed shape,
and added with their blend weight into a buffer one window deep along Z (one window and
one step when pipelined, so that finalising a slab never stalls the model). As soon as no
later window can touch a slab of Z it is finalised (normalised, or argmaxed for
``output="labels"``) and written out, so the working memory is
O(patch depth x Y x X x n_classes) rather than O(volume x n_classes).

Where the model frees the CPU while it runs (a GPU), three things overlap, as nnU-Net's
predictor does: a producer thread cuts the next batches while the model runs, and a
stitcher thread adds batch k while the model predicts batch k + 1. NumPy and the Keras
backends release the GIL in their heavy calls. A model that computes on the CPU runs
with cutting and stitching after it instead, which is faster on few cores
(:func:`_frees_cpu`).

:func:`predict_volume` is a sequence of steps, each a function of its own:
:func:`_options` (every argument check), :func:`_windows` (the grid, or the part of it a
``region`` needs), :func:`_cut_batch` (windows into a batch buffer, padded; threads share
a batch cut from an array in memory), :class:`_Predictor` (the model on a batch, mirrored
and checked), and the merging :class:`helpers.stitching._Stitcher`, built on the first
output; :func:`_run_sequential` or :func:`_run_pipelined` drives them (after
:func:`_run_probe` for a callable model).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from helpers.checks import check_finite, check_volume
from helpers.patches import (
    Blend,
    Window,
    as_patch_shape,
    blend_weights,
    check_overlap,
    clip_window,
    sliding_windows,
    window_starts,
)
from helpers.stitching import Output, _Stitcher, check_label_dtype
from helpers.workers import Workers

#: Batch buffers in the ring between the producer, the model and the stitcher.
RING_DEPTH = 4
_POLL_S = 0.05


def _check_model_input(model: Any, patch: tuple[int, int, int], channels: int) -> None:
    """Raise ValueError when a Keras model declares a spatial input other than ``patch``, or other
    than ``channels`` input channels (checked for every model that declares its input)."""
    try:
        declared = model.input_shape
    except Exception:  # a callable, or a Keras model not built yet
        return
    if isinstance(declared, list):
        declared = declared[0]
    if declared is None or len(declared) != 5:
        return
    spatial = tuple(declared[1:4])
    if any(d is not None and d != p for d, p in zip(spatial, patch, strict=True)):
        raise ValueError(f"patch_size {patch} does not match the model's input patch {spatial}")
    if declared[4] is not None and int(declared[4]) != channels:
        raise ValueError(
            f"the volume has {channels} channel(s) but the model takes {int(declared[4])} input "
            "channel(s); give the model the channels it was trained on, in the same order"
        )


def _predict_fn(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    if hasattr(model, "predict_on_batch"):
        fn = model.predict_on_batch
    elif callable(model):
        fn = model
    else:
        raise ValueError(f"model must be a Keras model or a callable, got {type(model).__name__}")

    def call(batch: np.ndarray) -> np.ndarray:
        return np.asarray(fn(batch))

    return call


#: A callable model's first calls run before the choice to pipeline; the last of them is timed
#: (the first may compile or warm caches).
PROBE_BATCHES = 2


def _worth_pipelining(model: Any) -> bool | None:
    """Whether the model frees the CPU while it runs (a GPU, a sleep, a remote call): a Keras
    model does when a GPU is visible; for a callable None, measured by :func:`_frees_cpu`."""
    if hasattr(model, "predict_on_batch"):
        from helpers.model import gpu_count

        return gpu_count() > 0
    return None


def _frees_cpu(wall: float, cpu: float) -> bool:
    """Whether a model call that took ``wall`` seconds, while this process used ``cpu`` seconds
    of CPU, left the CPU free for cutting and stitching: under half a core busy on average.

    A model that computes on the CPU (NumPy, Keras or torch without a GPU) keeps a core or
    more busy; overlapping cutting and stitching with it then only makes them compete for
    the cores (on 2 cores a NumPy stand-in ran slower pipelined: docs/benchmarks.md, stitching.py).

    >>> _frees_cpu(0.040, 0.001), _frees_cpu(0.007, 0.007)
    (True, False)
    """
    return cpu < 0.5 * wall


def check_mirror_axes(tta: str | None, mirror_axes: Sequence[int]) -> tuple[int, ...]:
    """Validate ``tta`` and return the spatial axes to mirror (empty when ``tta`` is None)."""
    if tta is None:
        return ()
    if tta != "mirror":
        raise ValueError(f"tta must be None or 'mirror', got {tta!r}")
    try:
        axes = tuple(sorted({int(a) for a in mirror_axes}))
    except (TypeError, ValueError):
        raise ValueError(f"mirror_axes must be spatial axes among 0, 1, 2, got {mirror_axes!r}") from None
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror_axes must be spatial axes among 0, 1, 2, got {mirror_axes!r}")
    return axes


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (spatial, 0-2): the flips test-time mirroring averages.

    >>> mirror_flips((0, 2))
    [(), (0,), (2,), (0, 2)]
    """
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class _Stopped(Exception):
    """Another stage of the pipeline failed; this one stops quietly."""


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


class _Source:
    """Reads windows (with a channel axis) from an ndarray directly, or from an array-like
    (zarr, h5py) a block at a time: one Z row of windows by four stored chunks along Y, so
    the volume is never read whole and each stored chunk is decompressed about twice."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume
        self.direct = isinstance(volume, np.ndarray) and not isinstance(volume, np.memmap)
        self.channels = len(volume.shape) == 4
        stored = getattr(volume, "chunks", None)
        self.chunk_y = int(stored[1]) if stored else 64
        self.origin = tuple(b.start for b in volume.box) if isinstance(volume, _Offset) else (0, 0, 0)
        self.key: tuple[int, int, int, int] | None = None
        self.slab: np.ndarray | None = None

    def read(self, inside: Window) -> np.ndarray:
        if self.direct:
            data = self.volume[inside]
        else:  # a Z row of windows, a block of stored chunks along Y: each chunk is read about twice
            (z0, z1), (y0, y1) = (inside[0].start, inside[0].stop), (inside[1].start, inside[1].stop)
            key = self.key
            if key is None or (z0, z1) != key[:2] or y0 < key[2] or y1 > key[3]:
                oy = self.origin[1]
                start = max(0, (y0 + oy) // self.chunk_y * self.chunk_y - oy)
                stop = min(self.volume.shape[1], max(y1, start + 4 * self.chunk_y))
                self.slab, self.key = np.asarray(self.volume[z0:z1, start:stop]), (z0, z1, start, stop)
                key = self.key
                o = self.origin
                check_finite(self.slab, origin=(z0 + o[0], start + o[1], o[2]))
            data = self.slab[:, y0 - key[2] : y1 - key[2], inside[2]]
        return data if self.channels else data[..., None]


class _Offset:
    """A read-only view of ``volume[box]`` for array-likes, read lazily (slicing a zarr array reads it)."""

    def __init__(self, volume: Any, box: tuple[slice, slice, slice]) -> None:
        self.volume, self.box = volume, box
        self.shape = tuple(b.stop - b.start for b in box) + tuple(volume.shape[3:])
        self.dtype, self.ndim = volume.dtype, len(self.shape)
        self.chunks = getattr(volume, "chunks", None)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        moved = []
        for i, k in enumerate(key):
            if i < 3 and isinstance(k, slice):
                start, stop, _ = k.indices(self.shape[i])
                moved.append(slice(self.box[i].start + start, self.box[i].start + stop))
            else:
                moved.append(k)
        return np.asarray(self.volume[tuple(moved)])


def region_windows(
    shape: Sequence[int], region: Sequence[slice], patch: tuple[int, int, int], overlap: float
) -> tuple[list[Window], tuple[slice, slice, slice], tuple[slice, slice, slice]]:
    """The windows of the whole-volume grid that touch ``region``, in the coordinates of their bounding box.

    Returns ``(windows, bbox, crop)``: ``volume[bbox]`` is all the input those windows
    read, and ``crop`` is ``region`` inside ``bbox``. The windows are the same, in the
    same z-major order, as :func:`helpers.patches.sliding_windows` gives for the whole
    volume, so that every voxel of the region sums the same predictions in the same order.
    """
    if len(region) != 3 or not all(isinstance(r, slice) for r in region):
        raise ValueError(f"region must be 3 slices (Z, Y, X), got {region!r}")
    starts, bbox, crop = [], [], []
    for r, size, p in zip(region, shape[:3], patch, strict=True):
        r0, r1, step = r.indices(int(size))
        if step != 1 or r1 <= r0:
            raise ValueError(
                f"region must be 3 non-empty slices with step 1 inside {tuple(shape[:3])}, got {region!r}"
            )
        kept = [s for s in window_starts(int(size), p, overlap) if s < r1 and s + p > r0]
        lo, hi = kept[0], min(kept[-1] + p, int(size))
        starts.append([s - lo for s in kept])
        bbox.append(slice(lo, hi))
        crop.append(slice(r0 - lo, r1 - lo))
    windows = [
        (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        for z in starts[0]
        for y in starts[1]
        for x in starts[2]
    ]
    return windows, tuple(bbox), tuple(crop)  # type: ignore[return-value]


def _check_out(out: Any, shape: tuple[int, ...], output: Output) -> None:
    if out is None:
        return
    if not (hasattr(out, "shape") and hasattr(out, "dtype") and hasattr(out, "__setitem__")):
        raise ValueError(f"out must be a writable array (NumPy, memmap, zarr), got {type(out).__name__}")
    kind = np.dtype(out.dtype).kind
    if output == "labels":
        if tuple(out.shape) != shape or kind not in "iu":
            raise ValueError(
                f"out has shape {tuple(out.shape)} and dtype {out.dtype}; output='labels' needs "
                f"shape {shape} and an integer dtype such as uint8"
            )
    elif (
        len(out.shape) != 4
        or tuple(out.shape[:3]) != shape
        or np.dtype(out.dtype) not in (np.float32, np.float16)
    ):
        raise ValueError(
            f"out has shape {tuple(out.shape)} and dtype {out.dtype}; output='probabilities' needs "
            f"shape {(*shape, 'n_classes')} and dtype float32 (or float16)"
        )


def default_threads() -> int:
    """Stitching threads when ``threads`` is None: the CPU cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def predict_volume(
    model: Any,
    volume: Any,
    patch_size: int | Sequence[int] = 64,
    overlap: float = 0.5,
    batch_size: int = 8,
    blend: Blend = "gaussian",
    output: Output = "probabilities",
    progress: bool = True,
    pad_value: float = 0.0,
    *,
    tta: Literal["mirror"] | None = None,
    mirror_axes: Sequence[int] = (0, 1, 2),
    pipeline: bool | None = None,
    threads: int | None = None,
    out: Any = None,
    region: Sequence[slice] | None = None,
) -> Any:
    """Predict a whole volume with overlapping windows and blended stitching.

    Parameters
    ----------
    model : keras.Model or callable
        Maps a float32 batch (B, pz, py, px, C_in) to (B, pz, py, px, n_classes).
        A Keras model is called through ``predict_on_batch``.
    volume : ndarray or array-like, (Z, Y, X) or (Z, Y, X, C_in)
        Any real dtype; patches are converted to float32 batch by batch. A memmap,
        zarr array or h5py dataset is read a block at a time (one Z row of windows by
        four stored chunks along Y). NaN or Inf is refused: an array in memory is
        scanned first, one on disk block by block as it is read (no extra pass). Axes
        shorter than the patch are padded with ``pad_value`` patch by patch.
    patch_size : int or 3 ints
        Window size in voxels; must match the model's input.
    overlap : float in [0, 1)
        Fraction of a patch shared by neighbouring windows.
    batch_size : int
        Windows per model call. The last batch is padded to this size so a
        compiled model always sees one shape and is not retraced.
    blend : {"gaussian", "average", "none"}
        Gaussian importance weighting (sigma = patch/8), plain averaging, or
        no blending (each voxel from the last window that covers it).
    output : {"probabilities", "labels"}
        float32 (Z, Y, X, n_classes) blended model outputs, or the (Z, Y, X) uint8
        argmax (threshold 0.5 for a single output channel), computed slab by slab.
        Without ``out=``, probabilities are a channel-last view of a channel-first
        (n_classes, Z, Y, X) array (``np.moveaxis``): each class is one contiguous block,
        as nnU-Net and MONAI keep them; ``np.ascontiguousarray`` gives a channel-last copy.
    progress : bool
        Show a tqdm progress bar.
    tta : None or "mirror"
        ``"mirror"`` predicts every batch once per flip of ``mirror_axes`` (8 passes
        for 3 axes) and averages the probabilities before blending, as nnU-Net does.
    mirror_axes : spatial axes among 0, 1, 2
        The axes ``tta="mirror"`` flips.
    pipeline : bool, optional
        Cut, predict and stitch in three overlapping threads, or one after the other on
        this thread; the result is bit-identical either way. By default the threads
        overlap only where the model frees the CPU while it runs: a Keras model when a
        GPU is visible (without one it keeps every core busy itself, and threads beside
        it slowed it by 2-3 %); a callable when the second of its first
        :data:`PROBE_BATCHES` calls kept under half a core busy on average (a GPU, a
        sleep, a remote call). A callable that computes on the CPU runs sequentially.
    threads : int, optional
        Threads that share the stitching arithmetic and, for an array in memory, cutting
        each batch's windows (default: cores, at most 4). The result does not depend on it.
    out : writable array, optional
        Receives the result slab by slab instead of a new array: (Z, Y, X) integer
        for labels (wide enough for the classes: uint8 up to 256), (Z, Y, X, n_classes)
        float32 for probabilities (or float16: half the memory, each value rounded once
        after blending in float32). A memmap or zarr array lets the output exceed memory.
        ``out`` is returned.
    region : 3 slices, optional
        Compute only the windows of the whole volume's grid that touch ``region`` and
        return the result for ``region`` alone: exactly the values the whole-volume
        call gives there (for a model whose output for a window does not depend on the
        other windows of its batch). Only the input those windows cover is read.

    Returns
    -------
    ndarray or ``out``
        See ``output``.
    """
    volume = check_volume(volume)
    opts = _options(patch_size, overlap, batch_size, blend, output, pad_value, threads, tta, mirror_axes)
    windows, volume, crop = _windows(volume, opts, region, out)
    shape = tuple(int(s) for s in volume.shape[:3])
    _check_out(out, shape, output)
    if isinstance(volume, np.ndarray) and not isinstance(volume, np.memmap):
        check_finite(volume)  # in memory: one cheap pass; from disk, each block is checked as it is read
    n_in = int(volume.shape[3]) if len(volume.shape) == 4 else 1
    _check_model_input(model, opts.patch, n_in)
    predictor = _Predictor(_predict_fn(model), opts, out)
    threaded = _worth_pipelining(model) if pipeline is None else pipeline  # None: measured
    groups = [windows[i : i + opts.batch_size] for i in range(0, len(windows), opts.batch_size)]
    source = _Source(volume)
    cutters = Workers(opts.threads if source.direct else 1)  # an array in memory: threads share each batch
    ring = [np.empty((opts.batch_size, *opts.patch, n_in), dtype=np.float32) for _ in range(RING_DEPTH)]
    stitchers: list[_Stitcher] = []  # built on the first output, which gives the number of classes

    def stitch(k: int, pred: np.ndarray) -> None:
        if not stitchers:  # a ring one step deeper keeps pace with a pipelined model; with out=, memory first
            depth = opts.patch[0] + (_z_step(windows) if threaded and out is None else 0)
            args = (shape, windows, pred.shape[-1], opts.weights, output, out, opts.threads, crop, depth)
            stitchers.append(_Stitcher(*args))
        stitchers[0].add(pred, groups[k])

    from tqdm.auto import tqdm

    with tqdm(total=len(windows), disable=not progress, desc="predict_volume", unit="patch") as bar:
        stages = (
            lambda k, slot: cutters.run(
                lambda t: _cut_batch(source, groups[k], shape, ring[slot], opts.pad_value, (t, cutters.n))
            ),
            lambda k, slot: predictor(k, ring[slot]),
            stitch,
            lambda k: bar.update(len(groups[k])),
        )
        try:
            first = 0
            if threaded is None:  # a callable: its first batches run first, the last call is timed
                first = min(PROBE_BATCHES, len(groups))
                _run_probe(first, *stages)
                threaded = _frees_cpu(*predictor.last_call)
            runner = _run_pipelined if threaded else _run_sequential
            runner(len(groups), *stages, first=first)
            return stitchers[0].finish()
        finally:
            cutters.close()
            if stitchers:
                stitchers[0].close()


@dataclass(frozen=True)
class _Options:
    """:func:`predict_volume`'s checked options: the window, batching, blending and output."""

    patch: tuple[int, int, int]
    overlap: float
    batch_size: int
    weights: np.ndarray | None
    output: Output
    pad_value: float
    threads: int
    flips: list[tuple[int, ...]]


def _options(
    patch_size: int | Sequence[int],
    overlap: float,
    batch_size: int,
    blend: Blend,
    output: Output,
    pad_value: float,
    threads: int | None,
    tta: Literal["mirror"] | None,
    mirror_axes: Sequence[int],
) -> _Options:
    """Check :func:`predict_volume`'s options (each bad one raises ValueError naming it)."""
    patch = as_patch_shape(patch_size)
    overlap = check_overlap(overlap)
    real = isinstance(pad_value, (int, float, np.integer, np.floating)) and not isinstance(pad_value, bool)
    if not real or not np.isfinite(pad_value):
        raise ValueError(f"pad_value must be a finite number, got {pad_value!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if output not in ("probabilities", "labels"):
        raise ValueError(f"output must be 'probabilities' or 'labels', got {output!r}")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    flips = mirror_flips(check_mirror_axes(tta, mirror_axes))
    weights = blend_weights(patch, blend)
    n_threads = default_threads() if threads is None else int(threads)
    return _Options(patch, overlap, batch_size, weights, output, pad_value, n_threads, flips)


def _windows(
    volume: Any, opts: _Options, region: Sequence[slice] | None, out: Any
) -> tuple[list[Window], Any, tuple[slice, slice, slice] | None]:
    """The windows to predict, the volume they index, and the crop of the result (None: all of it).

    With ``region``, only the windows of the whole grid that touch it, over their
    bounding box of ``volume`` (read lazily from an array-like); see :func:`region_windows`.
    """
    if region is None:
        return sliding_windows(volume.shape, opts.patch, opts.overlap), volume, None
    if out is not None:
        raise ValueError("out= and region= cannot be combined: the result of a region is returned")
    windows, bbox, crop = region_windows(volume.shape, region, opts.patch, opts.overlap)
    return windows, volume[bbox] if isinstance(volume, np.ndarray) else _Offset(volume, bbox), crop


def _z_step(windows: Sequence[Window]) -> int:
    """The grid's step along Z: the largest gap between successive Z starts (0 for one row)."""
    starts = sorted({w[0].start for w in windows})
    return max((b - a for a, b in zip(starts, starts[1:], strict=False)), default=0)


def _cut_batch(
    source: _Source,
    windows: Sequence[Window],
    shape: tuple[int, ...],
    batch: np.ndarray,
    pad_value: float,
    share: tuple[int, int] = (0, 1),
) -> None:
    """Cut ``windows`` from ``source`` into ``batch`` (B, pz, py, px, C_in), padding with ``pad_value``
    where a window passes the volume's edge and in the slots past the last window.

    ``share`` is (t, n): cut only slots t, t + n, t + 2n, ... (n threads share a batch this way)."""
    t, n = share
    full = tuple(slice(0, p) for p in batch.shape[1:4])
    for i in range(t, len(batch), n):
        if i >= len(windows):
            batch[i] = pad_value
            continue
        inside, local = clip_window(windows[i], shape)
        if local != full:
            batch[i] = pad_value
        batch[i][local] = source.read(inside)


class _Predictor:
    """The model on one batch: the mean over every flip of ``opts.flips``, each output checked."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], opts: _Options, out: Any) -> None:
        self.predict, self.opts, self.out = predict, opts, out
        self.n_out: int | None = None  # the classes of the first output: every later one must match
        self.last_call = (0.0, 0.0)  # the last model call's wall and CPU seconds (this process)

    def __call__(self, k: int, batch: np.ndarray) -> np.ndarray:
        flips = self.opts.flips
        if len(flips) == 1:
            return self._checked(k, batch)
        total = None
        for axes in flips:
            ax = tuple(a + 1 for a in axes)
            pred = self._checked(k, np.ascontiguousarray(np.flip(batch, ax)) if ax else batch)
            pred = np.flip(pred, ax) if ax else pred
            total = pred.astype(np.float32, copy=True) if total is None else np.add(total, pred, out=total)
        return total / np.float32(len(flips))

    def _checked(self, k: int, batch: np.ndarray) -> np.ndarray:
        wall, cpu = time.perf_counter(), time.process_time()
        pred = self.predict(batch)
        self.last_call = (time.perf_counter() - wall, time.process_time() - cpu)
        self.n_out = _check_prediction(pred, batch, k * self.opts.batch_size, self.n_out, self.opts, self.out)
        return pred


def _check_prediction(
    pred: np.ndarray, batch: np.ndarray, first: int, n_out: int | None, opts: _Options, out: Any
) -> int:
    """Return the classes of ``pred``, the output for ``batch`` (whose first window is ``first``);
    raise ValueError when its shape is not the batch's or its classes differ from ``n_out``'s."""
    if pred.ndim != 5 or pred.shape[:4] != batch.shape[:4]:
        raise ValueError(
            f"model output has shape {pred.shape}; expected "
            f"{(opts.batch_size, *opts.patch, 'n_classes')} for an input batch of {batch.shape}"
        )
    n_out = pred.shape[-1] if n_out is None else n_out
    if pred.shape[-1] != n_out:
        raise ValueError(
            f"model output has {pred.shape[-1]} channels in the batch of window {first}, "
            f"but {n_out} before; a model must return the same number of classes every time"
        )
    if out is not None and opts.output == "probabilities" and out.shape[3] != n_out:
        raise ValueError(f"out has {out.shape[3]} channels but the model returns {n_out} classes")
    if out is not None and opts.output == "labels":
        check_label_dtype(out.dtype, n_out - 1, "out")
    return n_out


Stage = Callable[[int, int], Any]


def _run_probe(n: int, fill: Stage, predict: Stage, stitch: Callable, done: Callable) -> None:
    """Cut and predict the first ``n`` batches (ring slots 0..n-1), then stitch them: the
    stitcher is built once the model's calls have been timed (its depth depends on the choice)."""
    preds = []
    for k in range(n):
        fill(k, k)
        preds.append(predict(k, k))
    for k, pred in enumerate(preds):
        stitch(k, pred)
        done(k)


def _run_sequential(
    n: int, fill: Stage, predict: Stage, stitch: Callable, done: Callable, first: int = 0
) -> None:
    """Cut, predict and stitch batches ``first``..n-1 in turn on this thread, in ring slot 0."""
    for k in range(first, n):
        fill(k, 0)
        stitch(k, predict(k, 0))
        done(k)


def _run_pipelined(
    n: int, fill: Stage, predict: Stage, stitch: Callable, done: Callable, first: int = 0
) -> None:
    """Producer thread -> model on this thread -> stitcher thread, over a ring of batch buffers,
    for batches ``first``..n-1.

    ``fill(k, slot)`` cuts batch k into ring slot ``slot``; ``predict(k, slot)`` returns
    what ``stitch(k, item)`` adds. A slot goes back to the producer only once its batch
    is stitched, since a model may return a view of its input. The first error on any side stops the others
    within ``_POLL_S`` and is raised here; both threads are joined before returning.
    """
    stop = threading.Event()
    free: queue.Queue = queue.Queue()
    ready: queue.Queue = queue.Queue()
    predicted: queue.Queue = queue.Queue(maxsize=2)
    for slot in range(RING_DEPTH):
        free.put(slot)
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except _Stopped:
                pass
            except BaseException as err:  # noqa: BLE001 - re-raised on the caller's thread
                errors.append(err)
                stop.set()

        return run

    def produce() -> None:
        for k in range(first, n):
            slot = _get(free, stop)
            fill(k, slot)
            _put(ready, slot, stop)

    def consume() -> None:
        for k in range(first, n):
            slot, item = _get(predicted, stop)
            stitch(k, item)
            del item
            _put(free, slot, stop)

    workers = [
        threading.Thread(target=guarded(produce), name="predict_volume-cut", daemon=True),
        threading.Thread(target=guarded(consume), name="predict_volume-stitch", daemon=True),
    ]
    for w in workers:
        w.start()
    try:
        for k in range(first, n):
            slot = _get(ready, stop)
            item = predict(k, slot)
            _put(predicted, (slot, item), stop)
            del item
            done(k)
        while workers[1].is_alive() and not stop.is_set():
            workers[1].join(_POLL_S)
    except _Stopped:
        pass
    finally:
        stop.set()
        for w in workers:
            w.join()
    if errors:
        raise errors[0]
