"""Training: a resumable, crash-safe training loop.

:func:`train` runs Adam on a :class:`helpers.sampling.PatchSampler` in a locked run
folder (:mod:`helpers.runs`) and commits every finished epoch (the log every epoch;
the weights with the optimizer state, and the best model, every few and at the end),
so a killed kernel resumes from the last state commit and loses at most the epochs since.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from helpers.io import atomic_path, write_text_atomic
from helpers.model import SegmentationLoss, iou_metrics, strategy_scope
from helpers.runs import (  # read_log: re-exported for the notebooks
    Commit,
    RunFolderError,
    backup_dir,
    candidate_path,
    latest_commit,
    leftover_temporaries,
    orphaned_results,
    read_complete,
    read_log,
    resume_point,
    run_lock,
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
    copy.set_weights(model.get_weights())
    return copy


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
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        commit: Commit | None,
        monitor: str,
        epochs: int | None = None,
        state_every: int = STATE_EVERY,
        state_minutes: float = STATE_MINUTES,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.commit = commit or Commit(0, monitor=monitor, resume_from=0)
        self.resume = self.commit
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
                self._export.set_weights(self.model.get_weights())
            self._unwritten = epoch
        stopping = bool(getattr(self.model, "stop_training", False))
        state = self._state_due(epoch + 1, stopping)
        if self._unwritten is not None and (state or self._last(epoch + 1, stopping)):
            with atomic_path(candidate_path(self.run_dir, self._unwritten)) as tmp:
                self._export.save(tmp)
            self._unwritten = None
        if state:
            with atomic_path(weights_path(self.run_dir, epoch + 1)) as tmp:
                self.model.save_weights(tmp)
        resume_from = epoch + 1 if state else self.resume.epochs_done
        history = [*old.history, row]
        self.commit = Commit(epoch + 1, history, self.monitor, best, best_epoch, stopping, resume_from)
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
    commit. When the block ends with all ``epochs`` committed (or an early stop),
    ``complete.json`` is written and the resume point removed; a completed run is never
    trained again, and asking it for more epochs raises
    :class:`helpers.runs.RunFolderError`, as do a damaged ``complete.json`` and a
    ``best.keras`` or ``log.csv`` left without any record: nothing finished is deleted
    unasked. ``training.json`` records the seconds per epoch of the epochs this call
    trained, with ``record``.

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
        done = read_complete(run_dir)
        commit = None
        if done is None:
            newest = latest_commit(run_dir)
            if newest is not None and (newest.epochs_done >= epochs or newest.stopped_early):
                done = _complete(run_dir, newest, epochs)
            elif newest is None and orphaned_results(run_dir):
                raise RunFolderError(
                    f"{run_dir} holds {' and '.join(orphaned_results(run_dir))} but neither complete.json "
                    "nor a resume point: a finished run whose records were removed. Nothing was deleted; "
                    "delete those files (or the folder) to train again, or choose another run_dir"
                )
            else:
                commit = resume_point(run_dir)
        if done is not None:
            settle_complete(run_dir)
            if done["epochs"] < epochs:
                raise RunFolderError(
                    f"{run_dir} holds a completed {done['epochs']}-epoch run; to train {epochs} epochs "
                    "delete it or choose another run_dir"
                )
            print(f"{run_dir} already holds a completed {done['epochs']}-epoch run; delete it to retrain.")
            yield TrainingRun(run_dir, epochs, int(done.get("epochs_run", epochs)), True, [])
            return
        settle(run_dir, commit)
        resumed = commit.epochs_done if commit else 0
        if resumed:
            print(f"Resuming from {run_dir}: {resumed} epoch(s) already done.")
        checkpoint = RunCheckpoint(run_dir, commit, monitor, epochs, state_every, state_minutes)
        start = time.perf_counter()
        yield TrainingRun(run_dir, epochs, resumed, False, [checkpoint])
        ran = checkpoint.commit.epochs_done - resumed
        if ran > 0:
            elapsed = time.perf_counter() - start
            timing = {"seconds": elapsed, "epochs_run": ran, "seconds_per_epoch": elapsed / ran}
            write_text_atomic(run_dir / "training.json", json.dumps({**timing, **(record or {})}, indent=1))
        if checkpoint.commit.epochs_done >= epochs or checkpoint.commit.stopped_early:
            _complete(run_dir, checkpoint.commit, epochs)
            settle_complete(run_dir)


def compile_for_training(
    model: keras.Model,
    learning_rate: float = 1e-3,
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
    learning_rate: float = 1e-3,
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


def _complete(run_dir: Path, commit: Commit, epochs: int) -> dict[str, Any]:
    """Write ``complete.json`` for a run whose last commit is ``commit``.

    The state commit it would resume from stays until ``complete.json`` exists, so a
    kill in between still finds a resume point (:func:`settle_complete` removes it).
    """
    settle(run_dir, commit, resume_point(run_dir) or commit)
    done = {
        "epochs": epochs,
        "epochs_run": commit.epochs_done,
        "stopped_early": commit.stopped_early,
        "best": commit.best,
        "best_epoch": commit.best_epoch,
        "monitor": commit.monitor,
    }
    write_text_atomic(run_dir / "complete.json", json.dumps(done, indent=1))
    return done


def settle_complete(run_dir: Path) -> None:
    """After ``complete.json``: drop the resume point and any temporary file left by a crash."""
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    for tmp in leftover_temporaries(run_dir):
        tmp.unlink(missing_ok=True)


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
