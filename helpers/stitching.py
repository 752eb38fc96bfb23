"""Blended stitching: window predictions summed into a volume, finalised slab by slab.

:class:`_Stitcher` is the merging step of :func:`helpers.inference.predict_volume`. It
keeps the running sums only for Z in ``[base, base + depth)``, in a ring indexed by
``z % depth`` so that no slab is ever shifted. As soon as no later window can touch a
slab of Z it is finalised (normalised, or argmaxed for ``output="labels"``) and written
out, so the working memory is O(patch depth x Y x X x n_classes).

The sums are stored channel-first, one contiguous (depth, Y, X) plane per class plus one
for the summed weights. Broadcasting a weight over a short last axis of 3 classes is
about 3x slower than these contiguous planes, and the planes are split between threads
with no locks, since no two threads ever write the same voxel.

The arithmetic is in plain functions on arrays, each a step a reader can take alone:
:func:`_ring_pieces` (where absolute Z lives in the ring), :func:`_share_planes` and
:func:`_x_bands` (which thread writes what), :func:`_row_weight_sum` (the summed weights
of a row of windows), :func:`_add_weighted` (one window into the sums),
:func:`_check_finite_sums`, :func:`_blend_slices` and :func:`_argmax_slices` (a
finished slab out). The class keeps only the ring's state: ``base`` (the first Z not yet
written out) and ``requested`` (every Z below it is complete).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

import numpy as np

from helpers.memory import zeros
from helpers.patches import Window, clip_window

Output = Literal["probabilities", "labels"]


def _ring_pieces(z0: int, z1: int, depth: int) -> Iterator[tuple[slice, slice]]:
    """(ring slice, offset slice from z0) pieces of absolute Z in [z0, z1), at most two."""
    start, n = z0 % depth, z1 - z0
    first = min(n, depth - start)
    yield slice(start, start + first), slice(0, first)
    if first < n:
        yield slice(0, n - first), slice(first, n)


def _share_planes(
    n_classes: int, threads: int, width: int
) -> tuple[list[list[int]], list[int], list[tuple[int, int]]]:
    """How ``threads`` threads share ``n_classes`` class planes of X extent ``width``.

    Returns ``(whole, banded, fixed_bands)``: the planes each thread owns whole, the
    planes left over (split into X bands per batch, :func:`_x_bands`), and equal fixed X
    bands, one per thread, for the summed-weights plane.
    """
    cuts = np.linspace(0, width, threads + 1).astype(int)
    whole = threads * (n_classes // threads)
    return (
        [list(range(t, whole, threads)) for t in range(threads)],
        list(range(whole, n_classes)),
        [(int(cuts[t]), int(cuts[t + 1])) for t in range(threads)],
    )


def _x_bands(windows: Sequence[Window], width: int, threads: int) -> list[tuple[int, int]]:
    """Absolute X bands, one per thread, each covering the same share of the windows' voxels."""
    if threads == 1:
        return [(0, width)]
    edges = np.zeros(width + 1, np.int64)
    for window in windows:
        edges[window[2].start] += 1
        edges[min(window[2].stop, width)] -= 1
    cum = np.cumsum(np.cumsum(edges[:-1]))
    cuts = [0, *(int(np.searchsorted(cum, cum[-1] * k / threads)) for k in range(1, threads))]
    cuts.append(width)
    return [(cuts[t], cuts[t + 1]) for t in range(threads)]


def _row_weight_sum(row: Sequence[Window], weights: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Summed blend weights of one row of windows (all Y, X starts at one Z start): (pz, Y, X) float32."""
    depth = min(weights.shape[0], shape[0])
    block = zeros((depth, *shape[1:]), np.float32)
    for window in row:
        inside, local = clip_window(window, shape)
        block[(slice(None), *inside[1:])] += weights[local]
    return block


def _add_weighted(
    acc: np.ndarray,
    pred: np.ndarray,
    inside: Window,
    local: Window,
    planes: Sequence[int],
    weights: np.ndarray | None,
    tmp: np.ndarray,
) -> None:
    """Add one window's prediction ``pred`` (pz, py, px, C) times ``weights`` into the ring ``acc``.

    ``acc`` is (C, depth, Y, X); ``inside`` is the window in the volume and ``local`` the
    same voxels in the patch (:func:`helpers.patches.clip_window`); only the class
    ``planes`` are written. Without weights the window overwrites (``blend="none"``).
    ``tmp`` is a patch-sized float32 scratch array.
    """
    w = None if weights is None else weights[local]
    pieces = list(_ring_pieces(inside[0].start, inside[0].stop, acc.shape[1]))
    for c in planes:
        src, target = pred[(*local, c)], acc[c]
        if w is not None:
            src = np.multiply(src, w, out=tmp[local])
        for ring, off in pieces:
            if w is None:
                target[(ring, *inside[1:])] = src[off]
            else:
                target[(ring, *inside[1:])] += src[off]


def _add_share(
    acc: np.ndarray,
    run: Sequence[tuple[np.ndarray, Window]],
    planes: Sequence[int],
    banded: Sequence[int],
    band: tuple[int, int],
    weights: np.ndarray | None,
    tmp: np.ndarray,
    shape: tuple[int, int, int],
) -> None:
    """One thread's share of a run of (prediction, window) pairs: the class ``planes`` it owns
    whole, and the ``banded`` planes within its absolute X ``band`` (see :func:`_share_planes`)."""
    x0, x1 = band
    for p, window in run:
        inside, local = clip_window(window, shape)
        _add_weighted(acc, p, inside, local, planes, weights, tmp)
        a, b = max(inside[2].start, x0), min(inside[2].stop, x1)
        if banded and a < b:
            cols = slice(a - inside[2].start, b - inside[2].start)
            _add_weighted(acc, p, (*inside[:2], slice(a, b)), (*local[:2], cols), banded, weights, tmp)


def _check_finite_sums(acc: np.ndarray, classes: Sequence[int], ring: slice, z0: int, z1: int) -> None:
    """Raise ValueError if the model put NaN or Inf into a final slab (a sum is one cheap pass)."""
    for c in classes:
        sums = acc[c, ring]
        if not np.isfinite(np.add.reduce(sums, axis=None)) and not np.isfinite(sums).all():
            raise ValueError(
                f"model output contains NaN or Inf in class {c} for the windows covering "
                f"Z {z0}..{z1 - 1} (is the input normalised? have the weights diverged?)"
            )


def _blend_slices(
    acc: np.ndarray,
    wsum: np.ndarray | None,
    yx: tuple[slice, slice],
    first: int,
    target: np.ndarray,
    slices: Sequence[int],
    channel_first: bool,
) -> None:
    """Divide the sums by the summed weights, slice by slice so each write stays in cache.

    ``target`` is (C, Z, Y, X) when ``channel_first``, else (Z, Y, X, C); its slice ``j``
    is ring slice ``first + j`` of ``acc`` (C, depth, Y, X), cropped to ``yx``.
    """
    for j in slices:
        z = first + j
        for c in range(acc.shape[0]):
            dest = target[c, j] if channel_first else target[j, ..., c]
            if wsum is None:
                dest[...] = acc[(c, z, *yx)]
            else:
                np.divide(acc[(c, z, *yx)], wsum[(z, *yx)], out=dest)


def _argmax_slices(
    acc: np.ndarray,
    wsum: np.ndarray | None,
    yx: tuple[slice, slice],
    first: int,
    target: np.ndarray,
    slices: Sequence[int],
) -> None:
    """Argmax over classes (the first of equal scores wins, as np.argmax) slice by slice.

    One class is thresholded at 0.5 after normalising; several need no normalising, since
    dividing every class by the same positive sum cannot change which is largest.
    """
    for j in slices:
        z = first + j
        scores = acc[(slice(None), z, *yx)]
        if acc.shape[0] == 1:
            if wsum is not None:
                scores = scores / wsum[(z, *yx)]
            target[j] = scores[0] >= 0.5
            continue
        best = scores[0].copy()
        index = np.zeros(best.shape, target.dtype)
        for c in range(1, acc.shape[0]):
            higher = scores[c] > best
            np.copyto(index, c, where=higher)
            np.maximum(best, scores[c], out=best)
        target[j] = index


def _new_result(kept: tuple[int, ...], n_classes: int, output: Output) -> np.ndarray:
    """The array a stitcher writes into without ``out=``: labels, or channel-first probabilities."""
    if output == "labels":
        return zeros(kept, np.uint8 if n_classes <= 256 else np.int32)
    return zeros((n_classes, *kept), np.float32)


class _Threads:
    """``n`` threads that run a function once per thread index, the last on the calling thread."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool = ThreadPoolExecutor(n - 1) if n > 1 else None

    def run(self, fn: Callable[[int], None]) -> None:
        """Run ``fn(t)`` for t in 0..n-1 and wait for all; the first error is raised."""
        if self.pool is None:
            fn(0)
            return
        futures = [self.pool.submit(fn, t) for t in range(self.n - 1)]
        try:
            fn(self.n - 1)
        finally:
            for f in futures:
                f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _slab_target(result: Any, rows: slice, shape: tuple[int, ...], channel_first: bool) -> tuple[Any, bool]:
    """Where a finished slab of ``rows`` goes: a view of ``result`` (an ndarray, channel-first
    or not), or a new array of ``shape`` to write to an array-like such as zarr at once.
    Returns (target, whether it must be written to ``result[rows]`` afterwards)."""
    if channel_first:
        return result[:, rows], False
    if isinstance(result, np.ndarray):
        return result[rows], False
    return np.empty(shape, result.dtype), True


class _Stitcher:
    """Blended sums for Z in [base, base + depth), in a ring of channel-first planes.

    ``acc[c]`` holds the weighted scores of class c; ``wsum`` the summed weights, added
    once per row of windows from :func:`_row_weight_sum` (labels of several classes need none).

    ``depth`` is the ring's depth: a window's, or a window and one grid step when
    pipelined, so that a Z row's slabs are finalised a share per batch during the next
    row instead of all at once (a pipelined stitcher then keeps pace with the model).
    The threads share the class planes (:func:`_share_planes`, :func:`_x_bands`).
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
        depth: int | None = None,
    ) -> None:
        self.shape, self.weights, self.output, self.n_classes = shape, weights, output, n_classes
        self.crop = crop or tuple(slice(0, s) for s in shape)
        self.yx = self.crop[1:]
        self.row = [w for w in windows if w[0] == windows[0][0]]
        patch = tuple(s.stop - s.start for s in windows[0])
        self.patch_z = min(patch[0], shape[0])
        self.depth = min(depth or patch[0], shape[0])
        self.base, self.requested, self.last_row = 0, 0, -1
        plane = (self.depth, *shape[1:])
        self.acc = zeros((n_classes, *plane), np.float32)  # pages mapped at once (helpers.memory)
        normalise = weights is not None and (output == "probabilities" or n_classes == 1)
        self.wsum = zeros(plane, np.float32) if normalise else None
        self.row_weights: np.ndarray | None = None  # _row_weight_sum of self.row, once needed
        self.threads = max(1, min(threads, shape[2]))
        self.whole, self.banded, self.fixed_bands = _share_planes(n_classes, self.threads, shape[2])
        self.tmp = [np.empty(patch, np.float32) for _ in range(self.threads)]
        self.workers = _Threads(self.threads)
        # Probabilities of our own are kept channel-first, as the sums are, so each class plane
        # is written contiguously; finish() returns the channel-last view (no copy).
        self.channel_first = out is None and output == "probabilities"
        kept = tuple(c.stop - c.start for c in self.crop)
        self.result = out if out is not None else _new_result(kept, n_classes, output)

    def close(self) -> None:
        self.workers.close()

    def add(self, pred: np.ndarray, windows: Sequence[Window]) -> None:
        """Add predictions (B, pz, py, px, C) for ``windows`` (in z-major order), a Z run at a time."""
        run_start = 0
        for i in range(1, len(windows) + 1):
            if i == len(windows) or windows[i][0].start != windows[run_start][0].start:
                self._add_run(pred[run_start:i], windows[run_start:i])
                run_start = i

    def _add_run(self, preds: np.ndarray, windows: Sequence[Window]) -> None:
        """Add windows that share one Z start, then finalise the slabs no later window touches."""
        z = windows[0][0].start
        self.requested = max(self.requested, z)  # every Z below the row's start is complete
        if self.base < z + self.patch_z - self.depth:  # the ring slices the run will use
            self.finalise(z + self.patch_z - self.depth)
        new_row = self.wsum is not None and z != self.last_row
        self.last_row = z
        run = list(zip(preds, windows, strict=True))
        bands = _x_bands(windows, self.shape[2], self.threads)
        self.workers.run(lambda t: self._add_band(t, run, bands[t], new_row, z))
        if self.base < self.requested:  # a share of the pending slabs, in step with the row
            quota = -(-(self.depth - self.patch_z) * len(windows) // len(self.row)) + 1
            self.finalise(min(self.requested, self.base + quota))

    def _add_band(
        self, t: int, run: list[tuple[np.ndarray, Window]], band: tuple[int, int], new_row: bool, z: int
    ) -> None:
        """Thread ``t``'s share of a run: its fixed band of weights, its planes, its X band of the rest."""
        if new_row:
            if self.row_weights is None:
                self.row_weights = _row_weight_sum(self.row, self.weights, self.shape)
            (f0, f1) = self.fixed_bands[t]
            for ring, off in _ring_pieces(z, min(z + self.patch_z, self.shape[0]), self.depth):
                self.wsum[ring, :, f0:f1] += self.row_weights[off, :, f0:f1]
        _add_share(self.acc, run, self.whole[t], self.banded, band, self.weights, self.tmp[t], self.shape)

    def finalise(self, upto: int) -> None:
        """Write Z in [base, upto) to the result and free those ring slices."""
        upto = min(upto, self.shape[0])
        for ring, off in _ring_pieces(self.base, upto, self.depth):
            z0 = self.base + off.start
            self._finalise_piece(ring, z0, z0 + off.stop - off.start)
        self.base = upto

    def _finalise_piece(self, ring: slice, z0: int, z1: int) -> None:
        """Check, blend or argmax, and write out absolute Z [z0, z1) (ring slices ``ring``)."""
        self.workers.run(
            lambda t: _check_finite_sums(self.acc, range(t, self.n_classes, self.threads), ring, z0, z1)
        )
        a, b = max(z0, self.crop[0].start), min(z1, self.crop[0].stop)  # the rows of the result
        if a < b:
            rows = slice(a - self.crop[0].start, b - self.crop[0].start)
            plane = tuple(c.stop - c.start for c in self.yx)
            classes = (self.n_classes,) if self.output == "probabilities" else ()
            target, later = _slab_target(self.result, rows, (b - a, *plane, *classes), self.channel_first)
            first = ring.start + a - z0
            bounds = np.linspace(0, b - a, self.threads + 1).astype(int)
            args = (self.acc, self.wsum, self.yx, first, target)
            if self.output == "probabilities":
                step = partial(_blend_slices, *args, channel_first=self.channel_first)
            else:
                step = partial(_argmax_slices, *args)
            self.workers.run(lambda t: step(slices=range(bounds[t], bounds[t + 1])))
            if later:
                self.result[rows] = target
        self.acc[:, ring] = 0
        if self.wsum is not None:
            self.wsum[ring] = 0

    def finish(self) -> Any:
        """Finalise what is left and return the result (channel-last probabilities, or labels)."""
        self.finalise(self.shape[0])
        return np.moveaxis(self.result, 0, -1) if self.channel_first else self.result
