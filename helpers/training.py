"""Training: a resumable, crash-safe training loop.

:func:`train` runs Adam on a :class:`helpers.sampling.PatchSampler` in a locked run
folder and commits every finished epoch (the log every epoch; the weights with the
optimizer state, and the best model, every few and at the end), so a killed kernel
resumes from the last state commit and loses at most the epochs since. Only Keras
work is here: which files the folder holds, what to keep and where to resume are
decided in :mod:`helpers.runs` (:func:`helpers.runs.run_status`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from helpers.files import atomic_path
from helpers.model import SegmentationLoss, iou_metrics, strategy_scope
from helpers.runs import (  # read_log: re-exported for the notebooks
    Commit,
    backup_dir,
    candidate_path,
    finish_run,
    read_log,
    run_lock,
    run_status,
    settle,
    weights_path,
    write_commit,
)
from helpers.sampling import PatchSampler


def inference_copy(model: keras.Model) -> keras.Model:
    """An uncompiled copy of ``model`` with the same weights: architecture and weights only.

    Saved as ``.keras`` it holds no optimizer state: 171 MB instead of 512 MB for the
    42.6 M-parameter U-Net (``keras.models.clone_model`` keeps the optimizer).
    """
    copy = keras.Model.from_config(model.get_config())
    copy_weights(model, copy)
    return copy


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Give ``target`` (the same architecture) ``source``'s weights, one variable at a time:
    ``target.set_weights(source.get_weights())`` would first copy all of them to NumPy at once
    (171 MB more at the peak for the U-Net, which a 2 GB Binder container cannot spare)."""
    for to, value in zip(target.weights, source.weights, strict=True):
        to.assign(value)


def save_keras(model: keras.Model, path: str | os.PathLike[str]) -> None:
    """``model.save(path)``; on a small-memory machine its weights go through a temporary file
    beside ``path``, not memory. Keras asks psutil whether the weights fit in available memory,
    and psutil reads the whole host's, not a container's limit (mybinder's 2 GB): without this,
    saving the U-Net's ``.keras`` holds its 171 MB of weights in memory once more."""
    from helpers.config import is_small_memory

    saving = getattr(getattr(keras.src, "saving", None), "saving_lib", None)
    check = getattr(saving, "is_memory_sufficient", None)
    if check is None or not is_small_memory():
        model.save(path)
        return
    saving.is_memory_sufficient = lambda _model: False
    try:
        model.save(path)
    finally:
        saving.is_memory_sufficient = check


#: Defaults for how often the weights and optimizer state are saved (a state commit): every
#: 6 epochs or 10 minutes. The cpu profile's 12 epochs then save it once (512 MB), not twice.
STATE_EVERY, STATE_MINUTES = 6, 10.0


class RunCheckpoint(keras.callbacks.Callback):
    """Commit each finished epoch to the run folder so a kill at any moment loses little.

    At the end of every epoch, in this order: when a state commit is due, the best-model
    candidate (if ``monitor`` improved since the last one written) and the weights with
    the optimizer state; then the commit record (:func:`helpers.runs.write_commit`),
    each through a temporary file and a rename. Only then are ``best.keras`` and
    ``log.csv`` updated from the commit (:func:`helpers.runs.settle`). Put it after
    callbacks that may stop training (EarlyStopping), so the commit records the stop.

    A state commit (512 MB for the U-Net) is due once ``state_every`` epochs or
    ``state_minutes`` minutes have passed since the last, never at the last epoch
    (``complete.json`` follows it). A kill therefore costs at most ``state_every``
    epochs, or ``state_minutes`` minutes plus one epoch, whichever comes first.

    ``log.csv`` follows every epoch. The best model (171 MB) waits in memory and is
    written with each state commit and at the last epoch: a resume rolls back to the
    state commit and discards any later candidate, so writing one at every improvement
    would cost disk and protect nothing.

    Each commit carries the timing of the epochs this callback has seen since it was made
    (wall seconds from its creation, so including compile and the first trace), with
    ``record``: what ``training.json`` holds when that commit ends the run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        commit: Commit | None,
        monitor: str,
        epochs: int | None = None,
        state_every: int = STATE_EVERY,
        state_minutes: float = STATE_MINUTES,
        record: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.commit = commit or Commit(0, monitor=monitor, resume_from=0)
        self.resume = self.commit
        self.resume_start = self.commit.epochs_done  # the epochs done before this callback
        self.record = dict(record or {})
        self._started = time.perf_counter()
        self.monitor = monitor
        self.epochs = epochs
        self.state_every, self.state_seconds = int(state_every), 60.0 * float(state_minutes)
        self._last_state = time.monotonic()
        self._export: keras.Model | None = None  # the inference copy, built once
        self._unwritten: int | None = None  # the epoch of a best model not yet on disk

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        backup_dir(self.run_dir).mkdir(parents=True, exist_ok=True)
        self._last_state = time.monotonic()
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # Built here, a resume's saved state has somewhere to go, and the first training step
            # is traced once instead of twice (its variables would be created inside the trace):
            # 14.0 s instead of 21.0 s for the U-Net on 2 cores (benchmarks/first_step.py)
            optimizer.build(self.model.trainable_variables)
        if self.commit.epochs_done:
            self.model.load_weights(weights_path(self.run_dir, self.commit.epochs_done))

    def _last(self, done: int, stopping: bool) -> bool:
        last = self.epochs if self.epochs is not None else self.params.get("epochs")
        return stopping or (last is not None and done >= last)

    def _state_due(self, done: int, stopping: bool) -> bool:
        if self._last(done, stopping):
            return False
        waited = time.monotonic() - self._last_state
        return done - self.resume.epochs_done >= self.state_every or waited >= self.state_seconds

    def _timing(self, done: int) -> dict[str, Any]:
        ran = done - self.resume_start
        elapsed = time.perf_counter() - self._started
        return {"seconds": elapsed, "epochs_run": ran, "seconds_per_epoch": elapsed / ran, **self.record}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        row = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        old = self.commit
        best, best_epoch = old.best, old.best_epoch
        value = logs.get(self.monitor)
        if value is not None and (best is None or float(value) > best):
            best, best_epoch = float(value), epoch
            if self._export is None:
                self._export = inference_copy(self.model)
            else:
                copy_weights(self.model, self._export)
            self._unwritten = epoch
        stopping = bool(getattr(self.model, "stop_training", False))
        state = self._state_due(epoch + 1, stopping)
        if self._unwritten is not None and (state or self._last(epoch + 1, stopping)):
            with atomic_path(candidate_path(self.run_dir, self._unwritten)) as tmp:
                save_keras(self._export, tmp)
            self._unwritten = None
        if state:
            with atomic_path(weights_path(self.run_dir, epoch + 1)) as tmp:
                self.model.save_weights(tmp)
        resume_from = epoch + 1 if state else self.resume.epochs_done
        history = [*old.history, row]
        timing = self._timing(epoch + 1)
        self.commit = Commit(
            epoch + 1, history, self.monitor, best, best_epoch, stopping, resume_from, timing
        )
        write_commit(self.run_dir, self.commit)
        if state:
            self.resume, self._last_state = self.commit, time.monotonic()
        settle(self.run_dir, self.commit, self.resume)


def check_epochs(epochs: Any, name: str = "epochs") -> int:
    """Return ``epochs`` as an int >= 1, or raise ValueError naming it (``name``)."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {epochs!r}")
    return int(epochs)


@dataclass
class TrainingRun:
    """What :func:`training_run` hands to the ``model.fit`` call inside its block.

    ``done`` is True for a run folder that already holds a finished run: fit nothing.
    Otherwise fit from ``initial_epoch`` with ``callbacks`` (after any callback that
    may stop training, such as EarlyStopping).
    """

    run_dir: Path
    epochs: int
    initial_epoch: int
    done: bool
    callbacks: list[keras.callbacks.Callback]


@contextlib.contextmanager
def training_run(
    run_dir: str | os.PathLike[str],
    epochs: int,
    monitor: str = "val_mean_iou",
    record: dict[str, Any] | None = None,
    state_every: int = STATE_EVERY,
    state_minutes: float = STATE_MINUTES,
) -> Iterator[TrainingRun]:
    """Lock ``run_dir`` and resume what an interrupted training left there, for one ``model.fit``.

    The folder is locked for the block (:func:`helpers.runs.run_lock`): a second
    training on it fails at once with :class:`helpers.runs.RunLockedError`. The
    yielded :class:`TrainingRun` says where to start; its :class:`RunCheckpoint`
    commits every finished epoch atomically (the log every epoch; the weights with the
    optimizer state, and ``best.keras``, every ``state_every`` epochs or ``state_minutes``
    minutes and at the end), so after a kill at any moment the next call resumes from the last state
    commit. What the folder holds and where to start is decided once, by
    :func:`helpers.runs.run_status`, which prints what it found and what it discards. When
    the block ends with all ``epochs`` committed (or an early stop),
    :func:`helpers.runs.finish_run` writes ``training.json`` (the seconds per epoch of the
    epochs the last call trained, with its ``record``; kept in each commit, so a kill before
    ``complete.json`` loses neither), then ``complete.json``, and removes the resume point.
    A completed run is never trained again, and asking it for more epochs raises
    :class:`helpers.runs.RunFolderError`, as do a damaged ``complete.json`` and a
    ``best.keras`` or ``log.csv`` left without any record: nothing finished is deleted
    unasked.

    Example
    -------
    >>> with training_run("runs/demo", epochs=10) as run:  # doctest: +SKIP
    ...     if not run.done:
    ...         model.fit(data, epochs=10, initial_epoch=run.initial_epoch, callbacks=run.callbacks)
    """
    epochs = check_epochs(epochs)
    state_every = check_epochs(state_every, "state_every")
    if not isinstance(state_minutes, (int, float)) or not state_minutes > 0:
        raise ValueError(f"state_minutes must be a number > 0, got {state_minutes!r}")
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        status = run_status(run_dir, epochs)
        if status.message:
            print(status.message)
        if status.kind == "complete":
            yield TrainingRun(run_dir, epochs, status.initial_epoch, True, [])
            return
        checkpoint = RunCheckpoint(
            run_dir, status.commit, monitor, epochs, state_every, state_minutes, record=record
        )
        yield TrainingRun(run_dir, epochs, status.initial_epoch, False, [checkpoint])
        finish_run(run_dir, checkpoint.commit, epochs)


def learning_rate_schedule(
    learning_rate: float, *, schedule: str = "constant", total_steps: int | None = None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Adam's learning rate: ``learning_rate`` held constant, or ``schedule="cosine"``: falling
    from it along half a cosine to 0 at ``total_steps`` optimizer steps (epochs x steps per
    epoch). The schedule reads the optimizer's step count, which a resumed run restores.

    Example
    -------
    >>> rate = learning_rate_schedule(1e-3, schedule="cosine", total_steps=100)
    >>> round(float(rate(50)), 6)
    0.0005
    """
    from helpers.config import SCHEDULES

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: known schedules are {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return learning_rate
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r}: a cosine schedule needs an integer >= 1")
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)


def compile_for_training(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    loss: str = "dice+ce",
    class_names: tuple[str, ...] | None = None,
) -> keras.Model:
    """Compile ``model`` with Adam, :class:`helpers.model.SegmentationLoss` and the IoU metrics."""
    n_classes = int(model.output.shape[-1])
    with strategy_scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=SegmentationLoss(loss),
            metrics=iou_metrics(n_classes, class_names),
        )
    return model


def train(
    model: keras.Model,
    train_data: PatchSampler,
    val_data: PatchSampler | None,
    epochs: int,
    run_dir: str | os.PathLike[str],
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    loss: str = "dice+ce",
    class_names: tuple[str, ...] | None = None,
    early_stopping_patience: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: str | int = 2,
    record: dict[str, Any] | None = None,
    state_every: int = STATE_EVERY,
    state_minutes: float = STATE_MINUTES,
) -> dict[str, list[float]]:
    """Compile and fit ``model`` in a :func:`training_run` on ``run_dir``, resuming if interrupted.

    ``run_dir`` receives ``best.keras`` (best validation mean IoU, architecture and
    weights only, loadable with ``safe_mode=True``), ``log.csv`` (one row per
    finished epoch), ``backup/`` (the resume point, removed when training completes),
    ``training.json`` and ``complete.json``; see :func:`training_run`, which also
    explains ``state_every`` and ``state_minutes``.

    Returns the whole history read from ``log.csv``: {metric: [value per epoch]}.
    """
    monitor = "val_mean_iou" if val_data is not None else "mean_iou"
    with training_run(run_dir, epochs, monitor, record, state_every, state_minutes) as run:
        if not run.done:
            compile_for_training(model, learning_rate, loss, class_names)
            cbs: list[keras.callbacks.Callback] = []
            if early_stopping_patience:
                stop = keras.callbacks.EarlyStopping(
                    monitor=monitor, mode="max", patience=early_stopping_patience
                )
                cbs.append(stop)
            train_data.epoch = run.initial_epoch
            model.fit(
                train_data,
                validation_data=val_data,
                epochs=run.epochs,
                initial_epoch=run.initial_epoch,
                callbacks=[*cbs, *run.callbacks, *callbacks],
                verbose=verbose,
            )
    return read_log(Path(run_dir) / "log.csv")


class SimulatedInterruption(RuntimeError):
    """Raised by :class:`InterruptAfterEpoch` to mimic a crash or a killed kernel."""


class InterruptAfterEpoch(keras.callbacks.Callback):
    """Stop training abruptly after ``epoch`` (1-based) has finished and been backed up.

    For teaching and testing resume: ``train`` appends user callbacks after its
    :class:`RunCheckpoint`, so the epoch is committed before the interruption.
    """

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.stop_after = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch + 1 == self.stop_after:
            raise SimulatedInterruption(f"simulated interruption after epoch {self.stop_after}")
