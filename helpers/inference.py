"""Whole-volume prediction: pipelined sliding-window inference with blended stitching.

:func:`predict_volume` never holds all patches in memory. Windows are cut in z-major
order into a small ring of batch buffers, fed to the model in batches of a fixed shape,
and added with their blend weight into a buffer one window deep along Z (one window and
one step when pipelined, so that finalising a slab never stalls the model). As soon as no
later window can touch a slab of Z it is finalised (normalised, or argmaxed for
``output="labels"``) and written out, so the working memory is
O(patch depth x Y x X x n_classes) rather than O(volume x n_classes).

Three things overlap, as nnU-Net's predictor does: a producer thread cuts the next
batches while the model runs, and a stitcher thread adds batch k while the model
predicts batch k + 1. NumPy and the Keras backends release the GIL in their heavy calls.

The running sums are stored channel-first, one contiguous (depth, Y, X) plane per class
plus one for the summed weights, in a ring indexed by ``z % depth`` so no slab is ever
shifted. Broadcasting a weight over a short last axis of 3 classes is about 3x slower
than these contiguous planes, and the planes are split between threads with no locks,
since no two threads ever write the same plane.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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

Output = Literal["probabilities", "labels"]
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


def _worth_pipelining(model: Any) -> bool:
    """Whether the model frees the CPU while it runs (a GPU, a sleep, a remote call)."""
    if hasattr(model, "predict_on_batch"):
        from helpers.model import gpu_count

        return gpu_count() > 0
    return True


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


def _ring_pieces(z0: int, z1: int, depth: int) -> Iterator[tuple[slice, slice]]:
    """(ring slice, offset slice from z0) pieces of absolute Z in [z0, z1), at most two."""
    start, n = z0 % depth, z1 - z0
    first = min(n, depth - start)
    yield slice(start, start + first), slice(0, first)
    if first < n:
        yield slice(0, n - first), slice(first, n)


class _Stitcher:
    """Blended sums for Z in [base, base + depth), in a ring of channel-first planes.

    ``acc[c]`` holds the weighted scores of class c. The summed weights are the same
    for every row of windows along Z, so they are added once per row from a
    precomputed block. Labels with several classes need no weights at all: dividing
    every class by the same positive sum cannot change which is largest.

    The threads share the class planes: each owns whole planes, and the planes left
    over (3 classes on 2 threads leave one) are split into absolute X bands chosen per
    batch so that each thread gets the same number of voxels. No voxel is written by
    two threads, so there are no locks, and the work is balanced for any class count.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        windows: Sequence[Window],
        n_classes: int,
        weights: np.ndarray | None,
        output: Output,
        out: Any,
        threads: int,
        crop: tuple[slice, slice, slice] | None = None,
        deep: bool = False,
    ) -> None:
        self.shape, self.weights, self.output = shape, weights, output
        self.crop = crop or tuple(slice(0, s) for s in shape)
        self.yx = self.crop[1:]
        kept = tuple(c.stop - c.start for c in self.crop)
        self.n_classes, self.base = n_classes, 0
        first = windows[0]
        self.row = [w for w in windows if w[0] == first[0]]
        patch = tuple(s.stop - s.start for s in first)
        starts = sorted({w[0].start for w in windows})
        step = max((b - a for a, b in zip(starts, starts[1:], strict=False)), default=0)
        self.patch_z = min(patch[0], shape[0])
        # ``deep``: one step deeper than a window, so that a Z row's slabs can be finalised
        # a little per batch during the next row instead of all at once: a pipelined
        # stitcher then keeps pace with the model instead of stalling it at every row.
        self.depth = min(patch[0] + (step if deep else 0), shape[0])
        self.requested = 0
        plane = (self.depth, *shape[1:])
        self.acc = np.zeros((n_classes, *plane), np.float32)
        normalise = weights is not None and (output == "probabilities" or n_classes == 1)
        self.wsum = np.zeros(plane, np.float32) if normalise else None
        self.row_weights: np.ndarray | None = None
        self.last_row = -1
        self.threads = max(1, min(threads, shape[2]))
        cuts = np.linspace(0, shape[2], self.threads + 1).astype(int)
        whole = self.threads * (n_classes // self.threads)
        self.whole = [list(range(t, whole, self.threads)) for t in range(self.threads)]
        self.banded = list(range(whole, n_classes))
        self.fixed_bands = [(int(cuts[t]), int(cuts[t + 1])) for t in range(self.threads)]
        self.tmp = [np.empty(patch, np.float32) for _ in range(self.threads)]
        self.pool = ThreadPoolExecutor(self.threads - 1) if self.threads > 1 else None
        # Probabilities of our own are kept channel-first, as the sums are, so each class plane
        # is written contiguously; finish() returns the channel-last view (no copy).
        self.channel_first = out is None and output == "probabilities"
        if out is not None:
            self.result = out
        elif output == "labels":
            self.result = np.zeros(kept, dtype=np.uint8 if n_classes <= 256 else np.int32)
        else:
            self.result = np.zeros((n_classes, *kept), dtype=np.float32)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def _parallel(self, fn: Callable[[int], None]) -> None:
        """Run ``fn(thread)`` for every thread index, the last one on this thread."""
        if self.pool is None:
            fn(0)
            return
        futures = [self.pool.submit(fn, t) for t in range(self.threads - 1)]
        try:
            fn(self.threads - 1)
        finally:
            for f in futures:
                f.result()

    def add(self, pred: np.ndarray, windows: Sequence[Window]) -> None:
        """Add predictions (B, pz, py, px, C) for ``windows`` (in z-major order)."""
        run_start = 0
        for i in range(1, len(windows) + 1):
            if i == len(windows) or windows[i][0].start != windows[run_start][0].start:
                z = windows[run_start][0].start
                self.requested = max(self.requested, z)  # every Z below the row's start is complete
                if self.base < z + self.patch_z - self.depth:  # the ring slices the run will use
                    self.finalise(z + self.patch_z - self.depth)
                new_row = self.wsum is not None and z != self.last_row
                self.last_row = z
                run = list(zip(pred[run_start:i], windows[run_start:i], strict=True))
                bands = self._bands([w for _, w in run])
                self._parallel(lambda t, run=run, b=bands, n=new_row, z=z: self._add_band(t, run, b[t], n, z))
                if self.base < self.requested:  # a share of the pending slabs, in step with the row
                    quota = -(-(self.depth - self.patch_z) * (i - run_start) // len(self.row)) + 1
                    self.finalise(min(self.requested, self.base + quota))
                run_start = i

    def _bands(self, windows: Sequence[Window]) -> list[tuple[int, int]]:
        """Absolute X bands, one per thread, each covering the same share of the windows' voxels."""
        if self.threads == 1:
            return [(0, self.shape[2])]
        edges = np.zeros(self.shape[2] + 1, np.int64)
        for window in windows:
            edges[window[2].start] += 1
            edges[min(window[2].stop, self.shape[2])] -= 1
        cum = np.cumsum(np.cumsum(edges[:-1]))
        cuts = [0, *(int(np.searchsorted(cum, cum[-1] * k / self.threads)) for k in range(1, self.threads))]
        cuts.append(self.shape[2])
        return [(cuts[t], cuts[t + 1]) for t in range(self.threads)]

    def _row_weights(self) -> np.ndarray:
        """Summed weights of one row of windows (all Y, X starts at one Z start), (pz, Y, X); cached."""
        if self.row_weights is None:
            depth = min(self.weights.shape[0], self.shape[0])
            block = np.zeros((depth, *self.shape[1:]), np.float32)
            for window in self.row:
                inside, local = clip_window(window, self.shape)
                block[(slice(None), *inside[1:])] += self.weights[local]
            self.row_weights = block
        return self.row_weights

    def _add_band(
        self, t: int, run: list[tuple[np.ndarray, Window]], band: tuple[int, int], new_row: bool, z: int
    ) -> None:
        if new_row:
            block, (f0, f1) = self._row_weights(), self.fixed_bands[t]
            for ring, off in _ring_pieces(z, min(z + self.patch_z, self.shape[0]), self.depth):
                self.wsum[ring, :, f0:f1] += block[off, :, f0:f1]
        x0, x1 = band
        tmp = self.tmp[t]
        for p, window in run:
            inside, local = clip_window(window, self.shape)
            self._add_window(p, inside, local, self.whole[t], tmp)
            a, b = max(inside[2].start, x0), min(inside[2].stop, x1)
            if self.banded and a < b:
                cols = slice(a - inside[2].start, b - inside[2].start)
                self._add_window(p, (*inside[:2], slice(a, b)), (*local[:2], cols), self.banded, tmp)

    def _add_window(
        self, p: np.ndarray, inside: Window, local: Window, planes: Sequence[int], tmp: np.ndarray
    ) -> None:
        w = None if self.weights is None else self.weights[local]
        pieces = list(_ring_pieces(inside[0].start, inside[0].stop, self.depth))
        for c in planes:
            src, target = p[(*local, c)], self.acc[c]
            if w is not None:
                src = np.multiply(src, w, out=tmp[local])
            for ring, off in pieces:
                if w is None:
                    target[(ring, *inside[1:])] = src[off]
                else:
                    target[(ring, *inside[1:])] += src[off]

    def finalise(self, upto: int) -> None:
        """Write Z in [base, upto) to the result and free those ring slices."""
        upto = min(upto, self.shape[0])
        for ring, off in _ring_pieces(self.base, upto, self.depth):
            z0 = self.base + off.start
            self._finalise_piece(ring, z0, z0 + off.stop - off.start)
        self.base = upto

    def _check_finite(self, t: int, ring: slice, z0: int, z1: int) -> None:
        """Raise ValueError if the model put NaN or Inf into a final slab (a sum is one cheap pass)."""
        for c in range(t, self.n_classes, self.threads):
            sums = self.acc[c, ring]
            if not np.isfinite(np.add.reduce(sums, axis=None)) and not np.isfinite(sums).all():
                raise ValueError(
                    f"model output contains NaN or Inf in class {c} for the windows covering "
                    f"Z {z0}..{z1 - 1} (is the input normalised? have the weights diverged?)"
                )

    def _finalise_piece(self, ring: slice, z0: int, z1: int) -> None:
        self._parallel(lambda t: self._check_finite(t, ring, z0, z1))
        a, b = max(z0, self.crop[0].start), min(z1, self.crop[0].stop)  # the rows of the result
        if a < b:
            direct = isinstance(self.result, np.ndarray)
            plane = tuple(c.stop - c.start for c in self.yx)
            if self.output == "probabilities":
                spatial, finalise = (b - a, *plane, self.n_classes), self._probabilities
            else:
                spatial, finalise = (b - a, *plane), self._labels
            rows = slice(a - self.crop[0].start, b - self.crop[0].start)
            if self.channel_first:
                target = self.result[:, rows]
            else:
                target = self.result[rows] if direct else np.empty(spatial, self.result.dtype)
            first = ring.start + a - z0
            bounds = np.linspace(0, b - a, self.threads + 1).astype(int)
            self._parallel(lambda t: finalise(first, target, range(bounds[t], bounds[t + 1])))
            if not direct:
                self.result[rows] = target
        self.acc[:, ring] = 0
        if self.wsum is not None:
            self.wsum[ring] = 0

    def _probabilities(self, first: int, target: np.ndarray, slices: Sequence[int]) -> None:
        """Divide by the summed weights, slice by slice so each write stays in cache.

        ``target`` is (C, Z, Y, X) when ``self.channel_first``, else (Z, Y, X, C); its
        slice ``j`` is ring slice ``first + j``, cropped to ``self.yx``.
        """
        for j in slices:
            z = first + j
            for c in range(self.n_classes):
                dest = target[c, j] if self.channel_first else target[j, ..., c]
                if self.wsum is None:
                    dest[...] = self.acc[(c, z, *self.yx)]
                else:
                    np.divide(self.acc[(c, z, *self.yx)], self.wsum[(z, *self.yx)], out=dest)

    def _labels(self, first: int, target: np.ndarray, slices: Sequence[int]) -> None:
        """Argmax over classes (the first of equal scores wins, as np.argmax) slice by slice."""
        for j in slices:
            z = first + j
            scores = self.acc[(slice(None), z, *self.yx)]
            if self.n_classes == 1:
                if self.wsum is not None:
                    scores = scores / self.wsum[(z, *self.yx)]
                target[j] = scores[0] >= 0.5
                continue
            best = scores[0].copy()
            index = np.zeros(best.shape, target.dtype)
            for c in range(1, self.n_classes):
                higher = scores[c] > best
                np.copyto(index, c, where=higher)
                np.maximum(best, scores[c], out=best)
            target[j] = index

    def finish(self) -> Any:
        self.finalise(self.shape[0])
        return np.moveaxis(self.result, 0, -1) if self.channel_first else self.result


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
        overlap unless the model is a Keras model with no GPU to run on: it then keeps
        every core busy itself, and threads beside it slowed it by 2-3 %.
    threads : int, optional
        Threads that share the stitching arithmetic (default: cores, at most 4).
    out : writable array, optional
        Receives the result slab by slab instead of a new array: (Z, Y, X) integer
        for labels, (Z, Y, X, n_classes) float32 for probabilities (or float16: half the
        memory, each value rounded once after blending in float32). A memmap or zarr
        array lets the output exceed memory. ``out`` is returned.
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
    if region is not None:
        if out is not None:
            raise ValueError("out= and region= cannot be combined: the result of a region is returned")
        windows, bbox, crop = region_windows(volume.shape, region, patch, overlap)
        volume = volume[bbox] if isinstance(volume, np.ndarray) else _Offset(volume, bbox)
    else:
        windows, crop = sliding_windows(volume.shape, patch, overlap), None
    shape = tuple(int(s) for s in volume.shape[:3])
    _check_out(out, shape, output)
    if isinstance(volume, np.ndarray) and not isinstance(volume, np.memmap):
        check_finite(volume)  # in memory: one cheap pass; from disk, each block is checked as it is read
    n_in = int(volume.shape[3]) if len(volume.shape) == 4 else 1
    _check_model_input(model, patch, n_in)
    predict = _predict_fn(model)

    groups = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    full = tuple(slice(0, p) for p in patch)
    source = _Source(volume)
    state: dict[str, Any] = {}

    def fill(k: int, batch: np.ndarray) -> None:
        for i, window in enumerate(groups[k]):
            inside, local = clip_window(window, shape)
            if local != full:
                batch[i] = pad_value
            batch[i][local] = source.read(inside)
        if len(groups[k]) < batch_size:
            batch[len(groups[k]) :] = pad_value

    def checked(k: int, batch: np.ndarray) -> np.ndarray:
        pred = predict(batch)
        first = k * batch_size
        if pred.ndim != 5 or pred.shape[:4] != batch.shape[:4]:
            raise ValueError(
                f"model output has shape {pred.shape}; expected "
                f"{(batch_size, *patch, 'n_classes')} for an input batch of {batch.shape}"
            )
        n_out = state.setdefault("n_out", pred.shape[-1])
        if pred.shape[-1] != n_out:
            raise ValueError(
                f"model output has {pred.shape[-1]} channels in the batch of window {first}, "
                f"but {n_out} before; a model must return the same number of classes every time"
            )
        if out is not None and output == "probabilities" and out.shape[3] != n_out:
            raise ValueError(f"out has {out.shape[3]} channels but the model returns {n_out} classes")
        return pred

    def call(k: int, batch: np.ndarray) -> np.ndarray:
        if len(flips) == 1:
            return checked(k, batch)
        total = None
        for axes in flips:
            ax = tuple(a + 1 for a in axes)
            pred = checked(k, np.ascontiguousarray(np.flip(batch, ax)) if ax else batch)
            pred = np.flip(pred, ax) if ax else pred
            total = pred.astype(np.float32, copy=True) if total is None else np.add(total, pred, out=total)
        return total / np.float32(len(flips))

    ring = [np.empty((batch_size, *patch, n_in), dtype=np.float32) for _ in range(RING_DEPTH)]

    def model_stage(k: int, slot: int) -> np.ndarray:
        return call(k, ring[slot])

    def stitch(k: int, pred: np.ndarray) -> None:
        if "stitcher" not in state:
            n_threads = default_threads() if threads is None else int(threads)
            state["stitcher"] = _Stitcher(
                shape, windows, pred.shape[-1], weights, output, out, n_threads, crop, deep=state["deep"]
            )
        state["stitcher"].add(pred, groups[k])

    from tqdm.auto import tqdm

    with tqdm(total=len(windows), disable=not progress, desc="predict_volume", unit="patch") as bar:
        try:
            threaded = _worth_pipelining(model) if pipeline is None else pipeline
            state["deep"] = threaded and out is None  # with out=, memory comes first
            runner = _run_pipelined if threaded else _run_sequential
            runner(
                len(groups),
                lambda k, slot: fill(k, ring[slot]),
                model_stage,
                stitch,
                lambda k: bar.update(len(groups[k])),
            )
            return state["stitcher"].finish()
        finally:
            if "stitcher" in state:
                state["stitcher"].close()


Stage = Callable[[int, int], Any]


def _run_sequential(n: int, fill: Stage, predict: Stage, stitch: Callable, done: Callable) -> None:
    """Cut, predict and stitch each batch in turn on this thread, in ring slot 0."""
    for k in range(n):
        fill(k, 0)
        stitch(k, predict(k, 0))
        done(k)


def _run_pipelined(n: int, fill: Stage, predict: Stage, stitch: Callable, done: Callable) -> None:
    """Producer thread -> model on this thread -> stitcher thread, over a ring of batch buffers.

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
        for k in range(n):
            slot = _get(free, stop)
            fill(k, slot)
            _put(ready, slot, stop)

    def consume() -> None:
        for k in range(n):
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
        for k in range(n):
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
