"""The course's experiment in a few calls: data and split, training, baseline, scores.

Notebooks call these so that each one runs on its own: :func:`ensure_model`
trains a ``quick`` model when an earlier notebook's model is missing, and every
score is computed on the held-out slab, never on training patches.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from helpers.config import get_params
from helpers.datasets import SPLIT_AXIS, load_dataset, spatial_split
from helpers.io import write_text_atomic
from helpers.metrics import confusion_matrix, scores_from_confusion
from helpers.patches import window_starts
from helpers.preprocessing import normalize


class Prepared(NamedTuple):
    """A dataset ready for training: normalised image, labels and the spatial split."""

    name: str
    image: np.ndarray
    raw: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    class_names: tuple[str, ...]
    train: tuple[slice, ...]
    held_out: tuple[slice, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@lru_cache(maxsize=4)
def _prepare(name: str, shape: tuple[int, ...], zoom: float, fraction: float) -> Prepared:
    ds = load_dataset(name, sandstone_shape=shape, brain_zoom=zoom)
    train, held = spatial_split(ds.image.shape, fraction, SPLIT_AXIS[name])
    return Prepared(name, normalize(ds.image), ds.image, ds.labels, ds.affine, ds.class_names, train, held)


def prepare(params: dict[str, Any]) -> Prepared:
    """Load ``params["dataset"]``, normalise it and split it into training and held-out slabs."""
    return _prepare(
        params["dataset"],
        tuple(params["sandstone_shape"]),
        float(params["brain_zoom"]),
        float(params["val_fraction"]),
    )


def make_samplers(prep: Prepared, params: dict[str, Any]) -> tuple[Any, Any]:
    """Training sampler (augmented, resampled each epoch) and fixed validation sampler."""
    from helpers.sampling import PatchSampler

    common = {
        "patch_size": params["patch_size"],
        "batch_size": params["batch_size"],
        "n_classes": prep.n_classes,
    }
    train = PatchSampler(
        prep.image[prep.train],
        prep.labels[prep.train],
        steps_per_epoch=params["steps_per_epoch"],
        seed=0,
        **common,
    )
    val = PatchSampler(
        prep.image[prep.held_out],
        prep.labels[prep.held_out],
        steps_per_epoch=params["val_steps"],
        augment=False,
        seed=1,
        resample_each_epoch=False,
        **common,
    )
    return train, val


def train_from_params(params: dict[str, Any], callbacks: tuple = (), verbose: str | int = 2) -> dict:
    """Build the U-Net and train it as ``params`` say; returns the history from ``log.csv``.

    Writes ``training.json`` (seconds per epoch, precision) into ``run_dir``.
    """
    from helpers.model import build_unet, set_precision, strategy_scope
    from helpers.training import read_log, train

    prep = prepare(params)
    precision = set_precision("auto")
    with strategy_scope() as replicas:
        model = build_unet(prep.n_classes, patch_size=params["patch_size"])
    params = {**params, "batch_size": params["batch_size"] * replicas}
    train_data, val_data = make_samplers(prep, params)
    start = time.perf_counter()
    before = len(read_log(Path(params["run_dir"]) / "log.csv").get("epoch", []))
    history = train(
        model,
        train_data,
        val_data,
        params["epochs"],
        params["run_dir"],
        learning_rate=params["learning_rate"],
        loss=params["loss"],
        class_names=prep.class_names,
        callbacks=callbacks,
        verbose=verbose,
    )
    ran = len(history.get("epoch", [])) - before
    if ran > 0:
        elapsed = time.perf_counter() - start
        info = {
            "seconds": elapsed,
            "epochs_run": ran,
            "seconds_per_epoch": elapsed / ran,
            "precision": precision,
            "replicas": replicas,
            "profile": params["profile"],
        }
        write_json(Path(params["run_dir"]) / "training.json", info)
    return history


def ensure_model(params: dict[str, Any]) -> Path:
    """Path of the trained ``best.keras`` for ``params``; trains a ``quick`` one if it is missing."""
    path = Path(params["run_dir"]) / "best.keras"
    if path.exists():
        return path
    quick = get_params("quick", params["dataset"], output_dir=params["output_dir"])
    path = Path(quick["run_dir"]) / "best.keras"
    if not path.exists():
        print(
            f"No trained model in {params['run_dir']} (run 04_training first for a real one); "
            f"training a quick one in {quick['run_dir']}."
        )
        train_from_params(quick, verbose=0)
    return path


def multiotsu_baseline(image: np.ndarray, n_classes: int) -> np.ndarray:
    """Classic baseline: multi-Otsu thresholds on intensity, classes in intensity order (uint8)."""
    from skimage.filters import threshold_multiotsu

    thresholds = threshold_multiotsu(image, classes=n_classes)
    return np.digitize(image, thresholds).astype(np.uint8)


def evaluate(truth: np.ndarray, pred: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """Per-class IoU and Dice, their means and the confusion matrix, JSON-ready."""
    cm = confusion_matrix(truth, pred, len(class_names))
    s = scores_from_confusion(cm)
    return {
        "classes": list(class_names),
        "iou": [None if np.isnan(v) else float(v) for v in s["iou"]],
        "dice": [None if np.isnan(v) else float(v) for v in s["dice"]],
        "mean_iou": s["mean_iou"],
        "mean_dice": s["mean_dice"],
        "confusion": cm.tolist(),
        "voxels": int(truth.size),
    }


def distance_to_window_border(shape: tuple[int, ...], patch_size: int, overlap: float = 0.0) -> np.ndarray:
    """Per voxel of ``shape`` (Z, Y, X): voxels to the nearest inner window border, int32.

    Borders are the starts and ends of the windows of :func:`helpers.patches.sliding_windows`
    that fall inside the volume; a voxel touching one has distance 0.
    """
    per_axis = []
    for size in shape[:3]:
        starts = window_starts(size, patch_size, overlap)
        borders = {b for s in starts for b in (s, s + patch_size) if 0 < b < size}
        idx = np.arange(size)
        if borders:
            b = np.array(sorted(borders))
            d = np.minimum(np.abs(idx[:, None] - b[None, :]), np.abs(b[None, :] - 1 - idx[:, None]))
            per_axis.append(d.min(axis=1))
        else:
            per_axis.append(np.full(size, size, dtype=np.int64))
    dz, dy, dx = per_axis
    return np.minimum(np.minimum(dz[:, None, None], dy[None, :, None]), dx[None, None, :]).astype(np.int32)


def error_by_distance(
    truth: np.ndarray, pred: np.ndarray, distance: np.ndarray, max_distance: int
) -> np.ndarray:
    """Voxel error rate for each distance 0..max_distance (NaN where no voxel has it)."""
    wrong = (truth != pred).ravel()
    d = np.minimum(distance.ravel(), max_distance + 1)
    n = np.bincount(d, minlength=max_distance + 2)[: max_distance + 1]
    e = np.bincount(d, weights=wrong, minlength=max_distance + 2)[: max_distance + 1]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, e / np.maximum(n, 1), np.nan)


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(data, indent=2))


def record(params: dict[str, Any], section: str, data: dict[str, Any]) -> Path:
    """Merge ``data`` under ``section`` into ``<output_dir>/metrics/<dataset>.json`` (for the summary)."""
    path = Path(params["output_dir"]) / "metrics" / f"{params['dataset']}.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current[section] = data
    current["profile"] = params["profile"]
    return write_json(path, current)


def scores_table(results: dict[str, dict[str, Any]], metric: str = "iou") -> str:
    """Markdown table of per-class ``metric`` ("iou" or "dice") for several methods' :func:`evaluate`."""
    names = list(results)
    classes = results[names[0]]["classes"]
    rows = [f"| class | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    for i, cls in enumerate(classes):
        cells = [results[n][metric][i] for n in names]
        rows.append(f"| {cls} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in cells) + " |")
    means = [results[n][f"mean_{metric}"] for n in names]
    rows.append("| **mean** | " + " | ".join(f"**{v:.3f}**" for v in means) + " |")
    return "\n".join(rows)
