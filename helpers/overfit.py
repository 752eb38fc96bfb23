"""The overfit-one-batch check: can the model drive the loss down on one batch?

Before a long run, train a few steps on a single batch, the same batch every step.
A model, loss and optimizer that are wired correctly memorise it: the loss falls
step after step. If it does not, a longer run on many batches will not learn
either, and the fault (labels that do not match the channels, a learning rate far
off, a frozen layer, a head without softmax) is cheaper to find now.
:func:`overfit_one_batch` runs the check and then puts the model back as it was,
so the real training starts from the same weights and optimizer state.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


class _Repeat(keras.utils.PyDataset):
    """The same batch ``steps`` times: one epoch of ``model.fit``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, steps: int) -> None:
        super().__init__()
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y


class _StepLosses(keras.callbacks.Callback):
    """Each step's own loss. Keras logs the running mean of the epoch so far, so the
    loss of step k is (k + 1) times the mean after it, less k times the mean before."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []
        self._total = 0.0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        total = float(logs["loss"]) * (batch + 1)
        self.losses.append(total - self._total)
        self._total = total


def overfit_one_batch(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int) -> list[float]:
    """Train a compiled ``model`` ``steps`` times on one batch, return each step's loss, then restore it.

    ``x`` is the batch's images (B, Z, Y, X, C) float32 and ``y`` its one-hot labels
    (B, Z, Y, X, n_classes) float32, with the batch size and patch shape of the real
    training, so the step Keras traced (or will trace) for it is the same one: no
    second trace. The loss is the model's compiled loss, before each step's update.

    The weights (BatchNormalization's moving statistics included) and the optimizer's
    state (Adam's moments and step count) are copied before and put back after, so
    the model is as it was: a ``fit`` afterwards trains exactly as it would have
    without the check. That copy holds the weights in memory once more (171 MB for the
    course's U-Net), and the optimizer's state where it is not all zeros: nothing more
    for a fresh optimizer, 340 MB for Adam's moments after training.

    With soft Dice in the loss, choose a batch in which every class appears: the Dice
    of a class absent from the batch only nears 1 once its probabilities sum to less
    than the smoothing term, so the loss levels off near (absent classes) / n_classes.
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be a positive number of training steps, got {steps}")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError("model must be compiled with an optimizer and a loss before the check")
    if len(x) != len(y) or x.shape[1:-1] != y.shape[1:-1]:
        raise ValueError(f"x {x.shape} and y {y.shape} must be one batch: same batch size and patch shape")
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    state = [_copy_unless_zero(v) for v in optimizer.variables]
    record = _StepLosses()
    try:
        model.fit(_Repeat(x, y, steps), epochs=1, verbose=0, callbacks=[record])
    finally:
        model.set_weights(weights)
        for variable, value in zip(optimizer.variables, state, strict=True):
            variable.assign(keras.ops.zeros_like(variable) if value is None else value)
    return record.losses


def _copy_unless_zero(variable: Any) -> np.ndarray | None:
    """A copy of an optimizer variable's value, or None where it is all zeros: a fresh
    optimizer's moments, put back as zeros without holding a copy (340 MB for Adam on the
    course's U-Net, which a 2 GB Binder container cannot spare)."""
    value = np.asarray(keras.ops.convert_to_numpy(variable))
    return value if value.any() else None


def classes_present(y: np.ndarray) -> int:
    """How many classes appear in one-hot labels ``y`` (..., n_classes); for one 0/1
    channel (a binary task), whether background and foreground each appear: 0, 1 or 2.

    >>> classes_present(np.eye(3)[[0, 2, 2]])
    2
    >>> classes_present(np.array([[0.0], [1.0]]))
    2
    """
    voxels = y.reshape(-1, y.shape[-1])
    count = int(voxels.any(axis=0).sum())
    return count + int((voxels == 0).any()) if y.shape[-1] == 1 else count


def batch_with_most_classes(sampler: Any, tries: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The first of batches ``0 .. tries - 1`` of ``sampler`` with the most classes present.

    ``sampler[i]`` returns (x, y) with ``y`` one-hot (B, Z, Y, X, n_classes), or one
    0/1 channel for a binary task; the sampler's own state is not changed. A batch in
    which every class appears lets the loss of :func:`overfit_one_batch` approach zero.
    """
    tries = int(tries)
    if tries < 1:
        raise ValueError(f"tries must be a positive number of batches, got {tries}")
    best, best_count = None, -1
    for index in range(tries):
        x, y = sampler[index]
        count = classes_present(y)
        if count > best_count:
            best, best_count = (x, y), count
        if count == max(y.shape[-1], 2):
            break
    return best  # type: ignore[return-value]
