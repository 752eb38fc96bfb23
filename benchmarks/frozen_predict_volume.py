"""Baseline for benchmarks/stitching.py: sliding-window stitching as ``predict_volume`` did it at a4f303f.

The route every tutorial takes, on one thread, channel-last:

1. cut each window of :func:`helpers.patches.sliding_windows` (padded with zeros at the
   edges) into a batch, and call the model on the batch;
2. add each prediction (pz, py, px, C) times its blend weight into channel-last running
   sums, and the weight into a sum of weights;
3. divide once a slab of Z is final; for labels, argmax it.

Probabilities are summed straight into the (Z, Y, X, C) result; labels into a buffer one
window deep, shifted down slice by slice as the windows move along Z. Weighting a
(pz, py, px, C) block broadcasts the weight over a short last axis, which the course avoids
by repeating the weights per class once, ahead of time. Only what the benchmark calls is
kept: no argument checks, no progress bar; each batch's prediction is still checked for NaN,
as then.

>>> import numpy as np
>>> vol = np.random.default_rng(0).random((40, 36, 20), np.float32)
>>> model = lambda b: np.concatenate([b, 1 - b], axis=-1)
>>> from helpers.inference import predict_volume as course
>>> bool(np.allclose(predict_volume(model, vol, 16), course(model, vol, 16, progress=False), atol=1e-6))
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from helpers.io import check_finite
from helpers.patches import Blend, as_patch_shape, blend_weights, clip_window, sliding_windows


def predict_volume(
    model: Callable[[np.ndarray], np.ndarray],
    volume: np.ndarray,
    patch_size: int | Sequence[int] = 64,
    overlap: float = 0.5,
    batch_size: int = 8,
    blend: Blend = "gaussian",
    output: str = "probabilities",
    progress: bool = False,
) -> np.ndarray:
    """Blended sliding-window prediction of ``volume`` (Z, Y, X): float32 (Z, Y, X, C) or uint8 labels.

    ``blend`` is ``"gaussian"`` or ``"average"``; ``progress`` is accepted and ignored.
    """
    patch, shape = as_patch_shape(patch_size), volume.shape
    weights = blend_weights(patch, blend)
    windows = sliding_windows(shape, patch, overlap)
    check_finite(volume)
    batch, full = np.empty((batch_size, *patch, 1), np.float32), tuple(slice(0, p) for p in patch)
    sums: _ChannelLastSums | None = None
    for first in range(0, len(windows), batch_size):
        group = windows[first : first + batch_size]
        for i, window in enumerate(group):
            inside, local = clip_window(window, shape)
            if local != full:  # past the volume's edge: zeros
                batch[i] = 0
            batch[i][local] = volume[inside][..., None]
        batch[len(group) :] = 0
        pred = np.asarray(model(batch))
        if not np.isfinite(pred).all():
            raise ValueError(
                f"model output contains NaN or Inf for windows {first}..{first + len(group) - 1}"
            )
        if sums is None:
            sums = _ChannelLastSums(shape, patch[0], pred.shape[-1], weights, output)
        for i, window in enumerate(group):
            sums.add(pred[i], window)
    return sums.finish()


class _ChannelLastSums:
    """Running sums for Z in [base, base + depth): the result itself (probabilities) or a buffer."""

    def __init__(self, shape: tuple[int, ...], depth: int, n_classes: int, weights: np.ndarray, output: str):
        self.shape, self.depth, self.base, self.weights, self.output = (
            shape,
            min(depth, shape[0]),
            0,
            weights,
            output,
        )
        self.wsum = np.zeros((self.depth, *shape[1:]), np.float32)
        self.tmp = np.empty((*weights.shape, n_classes), np.float32)
        labels = output == "labels"
        self.result = np.zeros(shape if labels else (*shape, n_classes), np.uint8 if labels else np.float32)
        self.acc = np.zeros((self.depth, *shape[1:], n_classes), np.float32) if labels else None

    def _scores(self, z0: int, z1: int) -> np.ndarray:
        return self.result[z0:z1] if self.acc is None else self.acc[z0 - self.base : z1 - self.base]

    def add(self, pred: np.ndarray, window: tuple[slice, slice, slice]) -> None:
        if window[0].start > self.base:  # a new row of windows: the slabs above it are final
            shift = window[0].start - self.base
            self._finalise(shift)
            for buf in (self.acc, self.wsum):
                if buf is not None:
                    for i in range(self.depth - shift):  # slice by slice: no buffer-sized temporary
                        buf[i] = buf[i + shift]
                    buf[self.depth - shift :] = 0
            self.base = window[0].start
        inside, local = clip_window(window, self.shape)
        w = self.weights[local]
        tmp = np.multiply(pred[local], w[..., None], out=self.tmp[local])
        self._scores(inside[0].start, inside[0].stop)[(slice(None), *inside[1:])] += tmp
        self.wsum[(slice(inside[0].start - self.base, inside[0].stop - self.base), *inside[1:])] += w

    def _finalise(self, n: int) -> None:
        scores = self._scores(self.base, self.base + n)
        scores /= self.wsum[:n, ..., None]
        if self.output == "labels":
            for j in range(n):  # per slice, so the int64 argmax temporary stays small
                self.result[self.base + j] = np.argmax(scores[j], axis=-1)

    def finish(self) -> np.ndarray:
        self._finalise(min(self.depth, self.shape[0] - self.base))
        return self.result
