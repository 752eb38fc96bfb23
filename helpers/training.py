"""Training: on-the-fly patch sampling and a resumable training loop.

Instead of cutting every patch in advance (the tutorial route), :class:`PatchSampler`
draws random patches from the volumes at each step, a third of them centred on
foreground, with flips and 90-degree rotations. :func:`train` runs Adam with
checkpoints of the best model, a CSV log, and ``BackupAndRestore`` so a killed
kernel resumes from the last finished epoch.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from helpers.io import atomic_path
from helpers.model import SegmentationLoss, iou_metrics, strategy_scope
from helpers.patches import as_patch_shape, check_volume, pad_to_patch
from helpers.preprocessing import one_hot

MAX_CANDIDATES = 2_000_000


class PatchSampler(keras.utils.PyDataset):
    """Random training patches drawn on the fly from an image and its label map.

    Parameters
    ----------
    image : ndarray or np.memmap, (Z, Y, X) or (Z, Y, X, C)
        Intensities, already normalised; converted to float32 patch by patch.
    labels : ndarray or np.memmap, (Z, Y, X) of class indices
    patch_size : int or 3 ints
        Patch shape in voxels. Axes shorter than it are zero-padded.
    batch_size, steps_per_epoch : int
        Patches per batch; batches per epoch (``len(sampler)``).
    foreground_fraction : float
        Share of patches centred on a random voxel whose label is not
        ``background``; the candidate voxels are computed once (at most
        2 million, subsampled).
    augment : bool
        Random flips on each axis and 90-degree rotations in the planes whose
        two sides are equal, applied identically to image and labels.
    seed : int
        Batches depend only on (seed, epoch, index): reproducible, also with workers.
    n_classes : int, optional
        Width of the one-hot labels (default: ``labels.max() + 1``); 1 gives a
        single 0/1 channel for a sigmoid model.
    resample_each_epoch : bool
        False gives the same batches every epoch (use it for validation).
    **kwargs
        ``workers``, ``use_multiprocessing``, ``max_queue_size`` for Keras.

    Each item is ``(x, y)``: x float32 (B, pz, py, px, C), y float32 one-hot
    (B, pz, py, px, n_classes).
    """

    def __init__(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        patch_size: int | Sequence[int],
        batch_size: int,
        steps_per_epoch: int,
        foreground_fraction: float = 0.33,
        augment: bool = True,
        seed: int = 0,
        n_classes: int | None = None,
        background: int = 0,
        resample_each_epoch: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        image = check_volume(image, "image")
        if labels.shape != image.shape[:3]:
            raise ValueError(f"labels shape {labels.shape} differs from image shape {image.shape[:3]}")
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError(
                f"batch_size and steps_per_epoch must be >= 1, got {batch_size}, {steps_per_epoch}"
            )
        if not 0 <= foreground_fraction <= 1:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.patch = as_patch_shape(patch_size)
        self.image, _ = pad_to_patch(image, self.patch)
        self.labels, _ = pad_to_patch(labels, self.patch)
        self.n_classes = int(n_classes) if n_classes is not None else int(labels.max()) + 1
        self.batch_size, self.steps = int(batch_size), int(steps_per_epoch)
        self.foreground_fraction, self.augment = foreground_fraction, augment
        self.seed, self.epoch, self.resample = int(seed), 0, resample_each_epoch
        self.candidates = foreground_candidates(self.labels, background, MAX_CANDIDATES, self.seed)
        self.channels = 1 if image.ndim == 3 else image.shape[3]

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        if self.resample:
            self.epoch += 1

    def _start(self, rng: np.random.Generator) -> tuple[int, int, int]:
        shape = self.labels.shape
        if len(self.candidates) and rng.random() < self.foreground_fraction:
            centre = np.unravel_index(self.candidates[rng.integers(len(self.candidates))], shape)
            return tuple(  # type: ignore[return-value]
                int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, self.patch, shape, strict=True)
            )
        return tuple(int(rng.integers(0, s - p + 1)) for p, s in zip(self.patch, shape, strict=True))  # type: ignore[return-value]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch as (x, labels uint8) before one-hot encoding."""
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        x = np.empty((self.batch_size, *self.patch, self.channels), dtype=np.float32)
        y = np.empty((self.batch_size, *self.patch), dtype=np.uint8)
        for b in range(self.batch_size):
            z0, y0, x0 = self._start(rng)
            win = (
                slice(z0, z0 + self.patch[0]),
                slice(y0, y0 + self.patch[1]),
                slice(x0, x0 + self.patch[2]),
            )
            img = np.asarray(self.image[win], dtype=np.float32)
            lab = np.asarray(self.labels[win])
            if img.ndim == 3:
                img = img[..., None]
            if self.augment:
                img, lab = augment_patch(img, lab, rng)
            x[b], y[b] = img, lab
        return x, y

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.sample(index)
        if self.n_classes == 1:
            return x, (y > 0).astype(np.float32)[..., None]
        return x, one_hot(y, self.n_classes)


def foreground_candidates(
    labels: np.ndarray, background: int = 0, limit: int = MAX_CANDIDATES, seed: int = 0, chunk: int = 16
) -> np.ndarray:
    """Flat indices of up to ``limit`` voxels whose label is not ``background``, int64, sorted.

    Reads ``labels`` (an array or memmap) ``chunk`` Z slices at a time, so a large
    memmap is never loaded whole. Above ``limit`` each chunk keeps its share, drawn at random.
    """
    counts = [
        int(np.count_nonzero(labels[z : z + chunk] != background)) for z in range(0, labels.shape[0], chunk)
    ]
    total = sum(counts)
    rng = np.random.default_rng([seed, 2**31])
    plane = int(np.prod(labels.shape[1:]))
    parts = []
    for i, z in enumerate(range(0, labels.shape[0], chunk)):
        if not counts[i]:
            continue
        idx = np.flatnonzero(np.asarray(labels[z : z + chunk]).ravel() != background) + z * plane
        if total > limit:
            idx = np.sort(rng.choice(idx, round(limit * counts[i] / total), replace=False))
        parts.append(idx)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def augment_patch(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and a 90-degree rotation, the same for image (Z, Y, X, C) and labels (Z, Y, X)."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    planes = [(a, b) for a, b in ((0, 1), (0, 2), (1, 2)) if labels.shape[a] == labels.shape[b]]
    if planes:
        plane = planes[rng.integers(len(planes))]
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k, plane), np.rot90(labels, k, plane)
    return image, labels


class BestModelCheckpoint(keras.callbacks.Callback):
    """Save the model whenever ``monitor`` improves, through a temporary file and a rename.

    The file holds architecture and weights without the optimizer state (a third
    of the size): it is for inference; ``BackupAndRestore`` handles resuming.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        monitor: str = "val_mean_iou",
        mode: str = "max",
        best: float | None = None,
    ) -> None:
        super().__init__()
        self.path, self.monitor, self.sign = Path(path), monitor, 1.0 if mode == "max" else -1.0
        self.best = best
        self._export: keras.Model | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if self.best is None or self.sign * (value - self.best) > 0:
            self.best = float(value)
            if self._export is None:
                self._export = keras.models.clone_model(self.model)
            self._export.set_weights(self.model.get_weights())
            with atomic_path(self.path) as tmp:
                self._export.save(tmp)


def read_log(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """The CSV training log as {column: values}, one value per finished epoch."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: [float(r[k]) if k != "epoch" else int(r[k]) for r in rows] for k in rows[0]}


def _truncate_log(path: Path, keep_epochs: int) -> None:
    """Keep only rows of epochs < ``keep_epochs`` (0-based), so a resumed run logs each epoch once."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < keep_epochs]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)


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
) -> dict[str, list[float]]:
    """Train with Adam, resuming from ``run_dir`` if an earlier call was interrupted.

    ``run_dir`` receives ``best.keras`` (best validation mean IoU, loadable with
    ``safe_mode=True``), ``log.csv`` (one row per epoch, kept across resumes),
    ``backup/`` (BackupAndRestore state, removed when training completes) and
    ``complete.json``. A completed run with at least ``epochs`` epochs is not
    trained again: delete ``run_dir`` to start over.

    Returns the whole history read from ``log.csv``: {metric: [value per epoch]}.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path, done_path = run_dir / "log.csv", run_dir / "complete.json"
    if done_path.exists() and json.loads(done_path.read_text()).get("epochs", 0) >= epochs:
        print(f"{run_dir} already holds a completed {epochs}-epoch run; delete it to retrain.")
        return read_log(log_path)
    meta = run_dir / "backup" / "training_metadata.json"
    resumed = json.loads(meta.read_text())["epoch"] if meta.exists() else 0
    _truncate_log(log_path, resumed)
    if resumed:
        print(f"Resuming from {run_dir}: {resumed} epoch(s) already done.")
    history = read_log(log_path)
    monitor = "val_mean_iou" if val_data is not None else "mean_iou"
    best = max(history[monitor]) if history.get(monitor) else None
    if not resumed and (run_dir / "best.keras").exists():
        (run_dir / "best.keras").unlink()

    n_classes = int(model.output.shape[-1])
    with strategy_scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=SegmentationLoss(loss),
            metrics=iou_metrics(n_classes, class_names),
        )
    cbs: list[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        BestModelCheckpoint(run_dir / "best.keras", monitor=monitor, best=best),
        keras.callbacks.CSVLogger(str(log_path), append=True),
    ]
    if early_stopping_patience:
        cbs.append(
            keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=early_stopping_patience)
        )
    cbs.extend(callbacks)
    train_data.epoch = resumed
    model.fit(train_data, validation_data=val_data, epochs=epochs, callbacks=cbs, verbose=verbose)
    done_path.write_text(json.dumps({"epochs": epochs}))
    return read_log(log_path)


class SimulatedInterruption(RuntimeError):
    """Raised by :class:`InterruptAfterEpoch` to mimic a crash or a killed kernel."""


class InterruptAfterEpoch(keras.callbacks.Callback):
    """Stop training abruptly after ``epoch`` (1-based) has finished and been backed up.

    For teaching and testing resume: put it after BackupAndRestore (``train``
    appends user callbacks last).
    """

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.stop_after = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch + 1 == self.stop_after:
            raise SimulatedInterruption(f"simulated interruption after epoch {self.stop_after}")
