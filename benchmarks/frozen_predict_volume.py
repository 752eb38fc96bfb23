"""Frozen baseline for benchmarks/stitching.py: helpers/inference.py as of commit a4f303f.

Kept verbatim (apart from this docstring) so every run of the benchmark measures today's code against
the stitching that shipped before the channel-first accumulator. Do not edit or import it elsewhere.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from helpers.io import check_finite, check_volume
from helpers.patches import (
    Blend,
    as_patch_shape,
    blend_weights,
    check_overlap,
    clip_window,
    sliding_windows,
)

Output = Literal["probabilities", "labels"]


def _check_model_patch(model: Any, patch: tuple[int, int, int]) -> None:
    """Raise ValueError when a Keras model declares a spatial input other than ``patch``."""
    declared = getattr(model, "input_shape", None)
    if isinstance(declared, list):
        declared = declared[0]
    if declared is None or len(declared) != 5:
        return
    spatial = tuple(declared[1:4])
    if any(d is not None and d != p for d, p in zip(spatial, patch, strict=True)):
        raise ValueError(f"patch_size {patch} does not match the model's input patch {spatial}")


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


class _SlabAccumulator:
    """Weighted sums for Z in [base, base + depth), finalised slab by slab.

    The summed weights always live in a rolling buffer one window deep. Class
    scores go straight into the output array for ``"probabilities"`` (divided in
    place once final), or into a rolling buffer for ``"labels"`` (argmaxed once final).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        depth: int,
        n_classes: int,
        weights: np.ndarray | None,
        output: Output,
    ) -> None:
        self.shape, self.depth, self.base = shape, min(depth, shape[0]), 0
        self.weights, self.output = weights, output
        self.wsum = None if weights is None else np.zeros((self.depth, *shape[1:]), np.float32)
        self.tmp = None if weights is None else np.empty((*weights.shape, n_classes), np.float32)
        if output == "labels":
            self.result = np.zeros(shape, dtype=np.uint8 if n_classes <= 256 else np.int32)
            self.acc: np.ndarray | None = np.zeros((self.depth, *shape[1:], n_classes), np.float32)
        else:
            self.result = np.zeros((*shape, n_classes), dtype=np.float32)
            self.acc = None

    def _scores(self, z0: int, z1: int) -> np.ndarray:
        """Accumulated class scores for absolute Z in [z0, z1)."""
        if self.acc is None:
            return self.result[z0:z1]
        return self.acc[z0 - self.base : z1 - self.base]

    def add(self, pred: np.ndarray, window: tuple[slice, slice, slice]) -> None:
        if window[0].start > self.base:
            self.advance(window[0].start)
        inside, local = clip_window(window, self.shape)
        scores = self._scores(inside[0].start, inside[0].stop)[(slice(None), *inside[1:])]
        if self.weights is None:
            scores[...] = pred[local]
            return
        w = self.weights[local]
        tmp = self.tmp[local]
        np.multiply(pred[local], w[..., None], out=tmp)
        scores += tmp
        self.wsum[(slice(inside[0].start - self.base, inside[0].stop - self.base), *inside[1:])] += w

    def advance(self, new_base: int) -> None:
        """Finalise Z in [base, new_base) and shift the rolling buffers to start at ``new_base``."""
        d = new_base - self.base
        self._finalise(d)
        for buf in (self.acc, self.wsum):
            if buf is None:
                continue
            for i in range(self.depth - d):  # slice by slice: no buffer-sized temporary
                buf[i] = buf[i + d]
            buf[self.depth - d :] = 0
        self.base = new_base

    def finish(self) -> np.ndarray:
        self._finalise(min(self.depth, self.shape[0] - self.base))
        return self.result

    def _finalise(self, n: int) -> None:
        scores = self._scores(self.base, self.base + n)
        if self.wsum is not None:
            scores /= self.wsum[:n, ..., None]
        if self.output == "probabilities":
            return
        target = self.result[self.base : self.base + n]
        if scores.shape[-1] == 1:
            target[...] = scores[..., 0] >= 0.5
        else:
            for j in range(n):  # per slice, so the int64 argmax temporary stays small
                target[j] = np.argmax(scores[j], axis=-1)


def predict_volume(
    model: Any,
    volume: np.ndarray,
    patch_size: int | Sequence[int] = 64,
    overlap: float = 0.5,
    batch_size: int = 8,
    blend: Blend = "gaussian",
    output: Output = "probabilities",
    progress: bool = True,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Predict a whole volume with overlapping windows and blended stitching.

    Parameters
    ----------
    model : keras.Model or callable
        Maps a float32 batch (B, pz, py, px, C_in) to (B, pz, py, px, n_classes).
        A Keras model is called through ``predict_on_batch``.
    volume : ndarray, (Z, Y, X) or (Z, Y, X, C_in)
        Any real dtype; patches are converted to float32 batch by batch. Axes
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
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    ndarray
        See ``output``.
    """
    volume = check_volume(volume)
    patch = as_patch_shape(patch_size)
    overlap = check_overlap(overlap)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if output not in ("probabilities", "labels"):
        raise ValueError(f"output must be 'probabilities' or 'labels', got {output!r}")
    weights = blend_weights(patch, blend)
    check_finite(volume)
    _check_model_patch(model, patch)
    predict = _predict_fn(model)

    shape = tuple(int(s) for s in volume.shape[:3])
    vol4 = volume if volume.ndim == 4 else volume[..., None]
    windows = sliding_windows(shape, patch, overlap)
    batch = np.empty((batch_size, *patch, vol4.shape[3]), dtype=np.float32)
    acc: _SlabAccumulator | None = None
    n_out = 0

    from tqdm.auto import tqdm

    with tqdm(total=len(windows), disable=not progress, desc="predict_volume", unit="patch") as bar:
        for first in range(0, len(windows), batch_size):
            group = windows[first : first + batch_size]
            for i, window in enumerate(group):
                inside, local = clip_window(window, shape)
                if local != tuple(slice(0, p) for p in patch):
                    batch[i] = pad_value
                batch[i][local] = vol4[inside]
            if len(group) < batch_size:
                batch[len(group) :] = pad_value
            pred = predict(batch)
            if pred.ndim != 5 or pred.shape[:4] != batch.shape[:4]:
                raise ValueError(
                    f"model output has shape {pred.shape}; expected "
                    f"{(batch_size, *patch, 'n_classes')} for an input batch of {batch.shape}"
                )
            if not np.isfinite(pred).all():
                raise ValueError(
                    f"model output contains NaN or Inf for windows {first}..{first + len(group) - 1}"
                    " (is the input normalised? have the weights diverged?)"
                )
            if acc is None:
                acc = _SlabAccumulator(shape, patch[0], pred.shape[-1], weights, output)
                n_out = pred.shape[-1]
            elif pred.shape[-1] != n_out:
                raise ValueError(
                    f"model output has {pred.shape[-1]} channels in the batch of window {first}, "
                    f"but {n_out} before; a model must return the same number of classes every time"
                )
            for i, window in enumerate(group):
                acc.add(pred[i], window)
            bar.update(len(group))
    assert acc is not None
    return acc.finish()
