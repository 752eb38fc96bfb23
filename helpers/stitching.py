"""Blended stitching: window predictions summed into a volume, finalised slab by slab.

:class:`_Stitcher` is the merging step of :func:`helpers.inference.predict_volume`. It
keeps the running sums only for Z in ``[base, base + depth)``, in a ring indexed by
``z % depth`` so that no slab is ever shifted. As soon as no later window can touch a
slab of Z it is finalised (normalised, or argmaxed for ``output="labels"``) and written
out, so the working memory is O(patch depth x Y x X x n_classes).

The sums are stored channel-last, (depth, Y, X, C), as the model returns its classes, so
weighting a window is one multiply by the blend weights (repeated once per class, ahead of
time) and one add, each over contiguous rows of px x C values. They are made a few Z slices
at a time (:data:`CHUNK_BYTES`), those slices of every window of a batch in turn, so the
sums the windows share are still in the cache when the next window adds to them. Reading one
class of a channel-last prediction at a time into channel-first sums, as this module did
before, is a strided pass per class: ``benchmarks/stitching.py`` times both ways as its
"floor" (docs/benchmarks.md).

Threads split each run of windows (the windows that share one Z start) by Z: thread t
adds Z slices ``[z_t, z_t+1)`` of every window of the run, in order, so no two threads
write the same voxel and each voxel sums its windows in the same order whatever the
number of threads: the result is the same to the last bit.

The summed weights are the same for every row of windows, so they are summed once
(:func:`_row_weight_sum`) and a finished slice adds up the rows that cover it
(:func:`_summed_weights`, in row order, as a ring of sums would have). A finished slice
is checked, blended or argmaxed, and zeroed for reuse in one pass while it is in cache.

The arithmetic is in plain functions on arrays, each a step a reader can take alone:
:func:`_ring_pieces` (where absolute Z lives in the ring), :func:`_z_shares` (which
thread writes which slices), :func:`_row_weight_sum`, :func:`_add_window` (slices of one
window into the sums), :func:`_check_finite`, :func:`_summed_weights`, :func:`_blend_slice`
and :func:`_argmax_slice` (a finished slice out). The class keeps only the ring's state:
``base`` (the first Z not yet written out) and ``requested`` (every Z below it is complete).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

from helpers.memory import zeros
from helpers.patches import Window, clip_window
from helpers.workers import Workers

Output = Literal["probabilities", "labels"]

#: Bytes of a window's prediction weighted at once: whole Z slices, at least one (about half an L2).
CHUNK_BYTES = 3 << 17


def _ring_pieces(z0: int, z1: int, depth: int) -> Iterator[tuple[slice, slice]]:
    """(ring slice, offset slice from z0) pieces of absolute Z in [z0, z1), at most two."""
    start, n = z0 % depth, z1 - z0
    first = min(n, depth - start)
    yield slice(start, start + first), slice(0, first)
    if first < n:
        yield slice(0, n - first), slice(first, n)


def _z_shares(length: int, threads: int) -> list[tuple[int, int]]:
    """``threads`` contiguous shares of ``range(length)``, as equal as can be (some may be empty).

    >>> _z_shares(64, 2), _z_shares(5, 3)
    ([(0, 32), (32, 64)], [(0, 1), (1, 3), (3, 5)])
    """
    cuts = np.linspace(0, length, threads + 1).astype(int)
    return [(int(cuts[t]), int(cuts[t + 1])) for t in range(threads)]


def _row_weight_sum(row: Sequence[Window], weights: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Summed blend weights of one row of windows (all Y, X starts at one Z start): (pz, Y, X) float32."""
    depth = min(weights.shape[0], shape[0])
    block = zeros((depth, *shape[1:]), np.float32)
    for window in row:
        inside, local = clip_window(window, shape)
        block[(slice(None), *inside[1:])] += weights[local]
    return block


def _add_window(
    acc: np.ndarray,
    pred: np.ndarray,
    inside: Window,
    local: Window,
    zs: tuple[int, int],
    weights: np.ndarray | None,
    tmp: np.ndarray,
) -> None:
    """Add Z slices ``zs`` (patch coordinates) of one window's ``pred`` (pz, py, px, C) times
    ``weights`` (pz, py, px, C) into the ring ``acc`` (depth, Y, X, C).

    ``inside`` is the window in the volume and ``local`` the same voxels in the patch
    (:func:`helpers.patches.clip_window`). Without weights the window overwrites
    (``blend="none"``). ``tmp`` (k, py, px, C) float32, k >= the slices of ``zs``, takes
    the weighted slices.
    """
    rows = (slice(*zs), *local[1:])
    src = pred[rows]
    if weights is not None:
        src = np.multiply(src, weights[rows], out=tmp[(slice(0, zs[1] - zs[0]), *local[1:])])
    for ring, off in _ring_pieces(inside[0].start + zs[0], inside[0].start + zs[1], acc.shape[0]):
        target = acc[(ring, *inside[1:])]
        if weights is None:
            target[...] = src[off]
        else:
            target += src[off]


def _check_finite(sums: np.ndarray, z0: int, z1: int) -> None:
    """Raise ValueError if the model put NaN or Inf into ``sums`` (..., C), a finished part of
    absolute Z [z0, z1); a sum is one cheap pass, the class is found only on failure."""
    if np.isfinite(np.add.reduce(sums, axis=None)) or np.isfinite(sums).all():
        return
    c = int(np.argmin(np.isfinite(sums.reshape(-1, sums.shape[-1])).all(axis=0)))
    raise ValueError(
        f"model output contains NaN or Inf in class {c} for the windows covering "
        f"Z {z0}..{z1 - 1} (is the input normalised? have the weights diverged?)"
    )


def _summed_weights(
    row_weights: np.ndarray, starts: Sequence[int], z: int, yx: tuple[slice, slice]
) -> np.ndarray:
    """The blend weights summed over every row of windows that covers absolute Z ``z``, cropped
    to ``yx``: ``row_weights`` (:func:`_row_weight_sum`) from each row starting at one of
    ``starts`` (increasing), added in that order. Returns (Y', X') float32."""
    depth = row_weights.shape[0]
    covering = [s for s in starts if s <= z < s + depth]
    total = row_weights[(z - covering[0], *yx)]
    for s in covering[1:]:
        total = total + row_weights[(z - s, *yx)]
    return total


def _blend_slice(
    sums: np.ndarray, wsum: np.ndarray | None, target: np.ndarray, j: int, channel_first: bool
) -> None:
    """Write ``sums`` (Y, X, C) divided by the summed weights ``wsum`` (Y, X; None: as they are)
    to slice ``j`` of ``target``, (C, Z, Y, X) when ``channel_first``, else (Z, Y, X, C)."""
    if not channel_first:
        if wsum is None:
            target[j] = sums
        else:
            np.divide(sums, wsum[..., None], out=target[j])
        return
    for c in range(sums.shape[-1]):
        if wsum is None:
            target[c, j] = sums[..., c]
        else:
            np.divide(sums[..., c], wsum, out=target[c, j])


def _argmax_slice(sums: np.ndarray, wsum: np.ndarray | None, target: np.ndarray, j: int) -> None:
    """Slice ``j`` of ``target`` (Z, Y, X): the argmax of ``sums`` (Y, X, C) over classes (the
    first of equal scores wins, as np.argmax). One class is thresholded at 0.5 after dividing by
    ``wsum``; several need no normalising, since dividing every class by the same positive sum
    cannot change which is largest.

    The classes are copied to contiguous planes first, and a higher class moves the index by
    arithmetic (``index += higher * (c - index)``), not a masked copy: comparing strided
    channel-last values and ``np.copyto(where=)`` cost 3.0 ms for a 384 x 384 slice of 3
    classes, this 0.6 ms (AMD EPYC, 2026-12-06).
    """
    if sums.shape[-1] == 1:
        score = sums[..., 0] if wsum is None else sums[..., 0] / wsum
        target[j] = score >= 0.5
        return
    planes = np.ascontiguousarray(np.moveaxis(sums, -1, 0))  # (C, Y, X), a copy of our own
    best, index = planes[0], np.zeros(planes.shape[1:], target.dtype)
    higher, step = np.empty(best.shape, bool), np.empty_like(index)
    for c in range(1, len(planes)):
        np.greater(planes[c], best, out=higher)
        np.subtract(c, index, out=step)  # at least 1: every index so far is below c
        np.multiply(step, higher, out=step)
        np.add(index, step, out=index)
        np.maximum(best, planes[c], out=best)
    target[j] = index


def label_dtype(n_classes: int) -> np.dtype:
    """The dtype of new label maps for ``n_classes`` classes: uint8 up to 256, else int32.

    >>> label_dtype(4), label_dtype(300)
    (dtype('uint8'), dtype('int32'))
    """
    return np.dtype(np.uint8 if n_classes <= 256 else np.int32)


def check_label_dtype(dtype: Any, highest: int, name: str) -> None:
    """Raise ValueError, naming ``name``, if integer ``dtype`` cannot hold labels up to ``highest``."""
    top = np.iinfo(dtype).max
    if top < highest:
        raise ValueError(
            f"{name}'s dtype {np.dtype(dtype)} holds labels up to {top}, but the model returns labels "
            f"up to {highest}; give {name} a wider integer dtype"
        )


def _new_result(kept: tuple[int, ...], n_classes: int, output: Output) -> np.ndarray:
    """The array a stitcher writes into without ``out=``: labels, or channel-first probabilities."""
    if output == "labels":
        return zeros(kept, label_dtype(n_classes))
    return zeros((n_classes, *kept), np.float32)


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
    """Blended sums for Z in [base, base + depth), in a channel-last ring (depth, Y, X, C).

    ``acc`` holds the weighted scores. The summed weights are not kept in a ring: every row
    of windows sums the same weights (:func:`_row_weight_sum`, once), so a finished slice
    adds up the rows that cover it (:func:`_summed_weights`; labels of several classes need
    none).

    ``depth`` is the ring's depth: a window's, or a window and one grid step when
    pipelined, so that a Z row's slabs are finalised a share per batch during the next
    row instead of all at once (a pipelined stitcher then keeps pace with the model).
    The threads share each run of windows by Z (:func:`_z_shares`).
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
        self.shape, self.output, self.n_classes = shape, output, n_classes
        self.crop = crop or tuple(slice(0, s) for s in shape)
        self.yx = self.crop[1:]
        self.row = [w for w in windows if w[0] == windows[0][0]]
        patch = tuple(s.stop - s.start for s in windows[0])
        self.patch_z = min(patch[0], shape[0])
        self.depth = min(depth or patch[0], shape[0])
        self.base, self.requested = 0, 0
        self.acc = zeros((self.depth, *shape[1:], n_classes), np.float32)  # pages mapped at once
        normalise = weights is not None and (output == "probabilities" or n_classes == 1)
        self.row_weights = _row_weight_sum(self.row, weights, shape) if normalise else None
        self.row_starts = sorted({w[0].start for w in windows})
        # The weights once per class, so that weighting a window is one contiguous multiply.
        self.weights = None if weights is None else np.repeat(weights[..., None], n_classes, axis=-1)
        self.threads = max(1, min(threads, self.patch_z))
        slices = max(1, min(patch[0], CHUNK_BYTES // (4 * n_classes * patch[1] * patch[2])))
        self.tmp = [np.empty((slices, *patch[1:], n_classes), np.float32) for _ in range(self.threads)]
        self.workers = Workers(self.threads)
        # Probabilities of our own are kept channel-first, each class one contiguous block, as
        # nnU-Net and MONAI keep them; finish() returns the channel-last view (no copy).
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
        run = list(zip(preds, windows, strict=True))
        shares = _z_shares(min(z + self.patch_z, self.shape[0]) - z, self.threads)
        self.workers.run(lambda t: self._add_share(run, shares[t], self.tmp[t]))
        if self.base < self.requested:  # a share of the pending slabs, in step with the row
            quota = -(-(self.depth - self.patch_z) * len(windows) // len(self.row)) + 1
            self.finalise(min(self.requested, self.base + quota))

    def _add_share(self, run: list[tuple[np.ndarray, Window]], zs: tuple[int, int], tmp: np.ndarray) -> None:
        """One thread's share of a run: Z slices ``zs`` (from the run's Z start) of every window."""
        # A few slices of every window in turn, so that the sums they share stay in cache.
        placed = [(p, *clip_window(window, self.shape)) for p, window in run]
        step = tmp.shape[0]
        for a in range(zs[0], zs[1], step):
            chunk = (a, min(zs[1], a + step))
            for p, inside, local in placed:
                _add_window(self.acc, p, inside, local, chunk, self.weights, tmp)

    def finalise(self, upto: int) -> None:
        """Write Z in [base, upto) to the result and free those ring slices."""
        upto = min(upto, self.shape[0])
        for ring, off in _ring_pieces(self.base, upto, self.depth):
            z0 = self.base + off.start
            self._finalise_piece(ring, z0, z0 + off.stop - off.start)
        self.base = upto

    def _finalise_piece(self, ring: slice, z0: int, z1: int) -> None:
        """Check, blend or argmax, and write out absolute Z [z0, z1) (ring slices ``ring``)."""
        a, b = max(z0, self.crop[0].start), min(z1, self.crop[0].stop)  # the rows of the result
        target, later = None, False
        if a < b:
            rows = slice(a - self.crop[0].start, b - self.crop[0].start)
            plane = tuple(c.stop - c.start for c in self.yx)
            classes = (self.n_classes,) if self.output == "probabilities" else ()
            target, later = _slab_target(self.result, rows, (b - a, *plane, *classes), self.channel_first)
        parts = _z_shares(z1 - z0, self.threads)
        self.workers.run(lambda t: self._finish_slices(ring.start, z0, z1, range(*parts[t]), target, (a, b)))
        if later:
            self.result[rows] = target

    def _finish_slices(
        self, first: int, z0: int, z1: int, js: range, target: Any, kept: tuple[int, int]
    ) -> None:
        """One thread's slices ``js`` of a finished piece (ring slice ``first + j`` is absolute Z
        ``z0 + j``): each checked, blended or argmaxed into ``target`` (whose slice 0 is
        absolute Z ``kept[0]``) when in ``kept``, the crop's rows, and zeroed while in cache."""
        for j in js:
            z, sums = z0 + j, self.acc[first + j]
            _check_finite(sums, z0, z1)
            if kept[0] <= z < kept[1]:
                crop = sums[self.yx]
                wsum = None
                if self.row_weights is not None:
                    wsum = _summed_weights(self.row_weights, self.row_starts, z, self.yx)
                if self.output == "probabilities":
                    _blend_slice(crop, wsum, target, z - kept[0], self.channel_first)
                else:
                    _argmax_slice(crop, wsum, target, z - kept[0])
            sums[...] = 0

    def finish(self) -> Any:
        """Finalise what is left and return the result (channel-last probabilities, or labels)."""
        self.finalise(self.shape[0])
        return np.moveaxis(self.result, 0, -1) if self.channel_first else self.result
