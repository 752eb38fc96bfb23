"""The course's glue: a dataset by parameters, its samplers, a trained model that knows what it is.

- :func:`prepare` opens ``params["dataset"]`` (an embedded name or a folder) once per
  process, aligned, resampled, normalised and split into train / val / test.
- :func:`make_samplers`: training patches (class-balanced, augmented) and a fixed,
  unbiased validation sample (no foreground oversampling).
- :func:`train_from_params` trains in ``params["run_dir"]`` and writes ``model.json``
  beside ``best.keras``: what the model was trained on and how to feed it.
- :func:`ensure_model` and :func:`load_trained` give the notebooks a model, and
  refuse one that was trained on another dataset.
- :func:`score_test` scores the test cases (or slab) at each scan's native resolution.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from helpers.config import DATASETS, get_params, model_params
from helpers.datasets import Dataset, open_dataset, remap_to_classes
from helpers.results import write_json

MODEL_INFO = "model.json"


class ModelMismatchError(ValueError):
    """A trained model used on data it was not trained for; the message says what differs."""


@lru_cache(maxsize=4)
def _open(dataset: str, shape: tuple[int, ...], zoom: float, fraction: float) -> Dataset:
    rest = (1.0 - fraction) / 2
    return open_dataset(dataset, sandstone_shape=shape, brain_zoom=zoom, fractions=(fraction, rest, rest))


def prepare(params: dict[str, Any]) -> Dataset:
    """The dataset of ``params``: aligned, resampled, normalised, split (cached per process).

    The embedded volumes are split into three slabs: the first ``1 - val_fraction``
    for training, the rest halved into validation and test.
    """
    return _open(
        params["dataset"],
        tuple(params["sandstone_shape"]),
        float(params["brain_zoom"]),
        1.0 - float(params["val_fraction"]),
    )


def patch_shape(ds: Dataset, params: dict[str, Any]) -> tuple[int, int, int]:
    """The model's patch (Z, Y, X) for ``ds``: a 3-tuple knob as given; an int is a cube for
    the embedded volumes and, for a folder, the voxel budget of a patch that follows the
    cases' median shape (:func:`helpers.model.default_patch_size`)."""
    size = params["patch_size"]
    if not isinstance(size, int):
        return tuple(int(s) for s in size)  # type: ignore[return-value]
    if ds.name in DATASETS:
        return (size, size, size)
    from helpers.model import default_patch_size

    median = np.median([c.shape for c in ds.cases], axis=0).astype(int)
    return default_patch_size(tuple(median), size)


def make_samplers(ds: Dataset, params: dict[str, Any], patch: tuple[int, int, int]) -> tuple[Any, Any]:
    """Training sampler (class-balanced, augmented, new patches each epoch) and a fixed
    validation sampler without foreground oversampling, so validation is an unbiased sample."""
    from helpers.sampling import PatchSampler

    names = {p: [c.name for c, _ in ds.part(p)] for p in ("train", "val")}
    images, labels = ds.arrays("train")
    train = PatchSampler(
        images,
        labels,
        patch,
        params["batch_size"],
        params["steps_per_epoch"],
        seed=0,
        n_classes=ds.n_classes,
        names=names["train"],
    )
    images, labels = ds.arrays("val")
    val = PatchSampler(
        images,
        labels,
        patch,
        params["batch_size"],
        params["val_steps"],
        foreground_fraction=0.0,
        augment=False,
        seed=1,
        n_classes=ds.n_classes,
        resample_each_epoch=False,
        names=names["val"],
    )
    return train, val


def model_info(ds: Dataset, params: dict[str, Any], patch: tuple[int, int, int]) -> dict[str, Any]:
    """What a model trained on ``ds`` with ``params`` is: stored as ``model.json`` beside it."""
    return {
        "dataset": ds.name,
        "dataset_source": params["dataset"],
        "fingerprint": ds.fingerprint,
        "class_names": list(ds.class_names),
        "label_ids": ds.label_ids,
        "modality": ds.modality,
        "normalisation": ds.normalisation,
        "target_spacing": list(ds.target_spacing),
        "patch_size": list(patch),
        "split": ds.split,
        "training": {**model_params(params), "profile": params["profile"]},
    }


def train_from_params(params: dict[str, Any], callbacks: tuple = (), verbose: str | int = 2) -> dict:
    """Build the U-Net and train it as ``params`` say; returns the history from ``log.csv``.

    Writes ``model.json`` (before training; a run folder whose ``model.json`` says
    otherwise is refused) and ``training.json`` (seconds per epoch, precision).
    """
    from helpers.model import build_unet, set_precision, strategy_scope
    from helpers.runs import RunFolderError
    from helpers.training import read_log, train

    ds = prepare(params)
    patch = patch_shape(ds, params)
    info = model_info(ds, params, patch)
    run_dir = Path(params["run_dir"])
    stored = run_dir / MODEL_INFO
    if stored.exists():
        import json

        differs = _differences(json.loads(stored.read_text()), json.loads(json.dumps(info)))
        if differs:
            raise RunFolderError(
                f"{run_dir} holds a model trained with other settings ({', '.join(differs)} differ); "
                "use another run_dir (or leave run_dir unset: each setting gets its own folder)"
            )
    else:
        write_json(stored, info)
    precision = set_precision("auto")
    with strategy_scope() as replicas:
        model = build_unet(ds.n_classes, patch_size=patch)
    params = {**params, "batch_size": params["batch_size"] * replicas}
    train_data, val_data = make_samplers(ds, params, patch)
    start = time.perf_counter()
    before = len(read_log(run_dir / "log.csv").get("epoch", []))
    history = train(
        model,
        train_data,
        val_data,
        params["epochs"],
        run_dir,
        learning_rate=params["learning_rate"],
        loss=params["loss"],
        class_names=ds.class_names,
        callbacks=callbacks,
        verbose=verbose,
    )
    ran = len(history.get("epoch", [])) - before
    if ran > 0:
        elapsed = time.perf_counter() - start
        timing = {
            "seconds": elapsed,
            "epochs_run": ran,
            "seconds_per_epoch": elapsed / ran,
            "precision": precision,
            "replicas": replicas,
            "profile": params["profile"],
            "patch_size": list(patch),
        }
        write_json(run_dir / "training.json", timing)
    return history


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys (dotted for nested dicts) whose values differ between two JSON-like dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def ensure_model(params: dict[str, Any]) -> Path:
    """The run folder of a trained model for ``params``; trains a ``quick`` one if it is missing."""
    run_dir = Path(params["run_dir"])
    if (run_dir / "best.keras").exists() and (run_dir / MODEL_INFO).exists():
        return run_dir
    quick = get_params("quick", params["dataset"], output_dir=params["output_dir"])
    run_dir = Path(quick["run_dir"])
    if not (run_dir / "best.keras").exists():
        print(
            f"No trained model in {params['run_dir']} (run 04_training first for a real one); "
            f"training a quick one in {run_dir}."
        )
        train_from_params(quick, verbose=0)
    return run_dir


def load_trained(run_dir: str | Path, ds: Dataset | None = None) -> tuple[Any, dict[str, Any]]:
    """The model in ``run_dir`` (``safe_mode=True``) and its ``model.json``.

    With ``ds``, refuses (:class:`ModelMismatchError`) a model trained on a dataset
    with other class names or another fingerprint, naming both datasets.
    """
    import json

    from helpers.model import load_model

    run_dir = Path(run_dir)
    info_path = run_dir / MODEL_INFO
    if not info_path.exists():
        raise ModelMismatchError(f"{run_dir} has no {MODEL_INFO}: it is not a trained course model")
    info = json.loads(info_path.read_text())
    if ds is not None:
        differs = [
            what
            for what, mine, theirs in (
                ("class names", list(ds.class_names), info["class_names"]),
                ("fingerprint", ds.fingerprint, info["fingerprint"]),
            )
            if mine != theirs
        ]
        if differs:
            raise ModelMismatchError(
                f"the model in {run_dir} was trained on dataset {info['dataset']!r} "
                f"(classes {info['class_names']}), not on {ds.name!r} (classes {list(ds.class_names)}): "
                f"{' and '.join(differs)} differ"
            )
    return load_model(run_dir / "best.keras"), info


def native_labels(ds: Dataset, name: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A case's label map (class indices) on its scan's native grid, and that grid's spacing (Z, Y, X)."""
    from helpers.geometry import align_to
    from helpers.io import load_volume

    case = ds.case(name)
    image = load_volume(case.image_path)
    stored = align_to(image, load_volume(case.labels_path))
    return remap_to_classes(stored, ds.label_ids), image.spacing


def score_test(
    model: Any, ds: Dataset, params: dict[str, Any], part: str = "test", baseline: bool = True
) -> dict[str, Any]:
    """Score ``model`` on every case (or the slab) of ``part`` at native resolution.

    Each case is predicted on the working grid with overlapping Gaussian-blended
    windows, brought back to the scan's grid (:meth:`helpers.geometry.Resampling.invert`)
    and scored there: IoU, Dice and HD95 (mm) per class, then the mean over cases.
    With ``baseline``, multi-Otsu thresholding is scored the same way, where it
    applies: on the embedded volumes, whose classes are ordered by intensity.
    """
    from helpers.inference import predict_volume
    from helpers.metrics import case_scores, mean_over_cases

    patch = tuple(model.input_shape[1:4])
    per_case, per_case_base, shapes = {}, {}, {}
    for case, region in ds.part(part):
        pred = predict_volume(
            model,
            case.image[region],
            patch_size=patch,
            overlap=params["overlap"],
            batch_size=params["batch_size"],
            output="labels",
            progress=False,
        )
        if ds.split["kind"] == "slabs":
            truth, spacing = case.labels[region], ds.target_spacing
        else:
            pred = case.resampling.invert(pred, labels=True, n_classes=ds.n_classes)
            truth, spacing = native_labels(ds, case.name)
        shapes[case.name] = list(truth.shape)
        per_case[case.name] = case_scores(truth, pred, ds.class_names, spacing)
        if baseline and ds.name in DATASETS:
            guess = multiotsu_baseline(case.image[region], ds.n_classes)
            per_case_base[case.name] = case_scores(truth, guess, ds.class_names, spacing)
    result: dict[str, Any] = {"part": part, "classes": list(ds.class_names), "shapes": shapes}
    for label, scores in (("unet", per_case), ("baseline", per_case_base)):
        if not scores:
            continue
        summary = {m: mean_over_cases(scores, m) for m in ("iou", "dice", "hd95")}
        summary["mean_iou"] = float(np.nanmean([s["mean_iou"] for s in scores.values()]))
        summary["mean_dice"] = float(np.nanmean([s["mean_dice"] for s in scores.values()]))
        result[label] = {"per_case": scores, **summary}
    result["baseline_note"] = (
        "multi-Otsu thresholding, classes in intensity order"
        if per_case_base
        else "no multi-Otsu baseline: it assumes classes ordered by intensity, which a dataset of "
        "your own need not have"
    )
    return result


def write_scores(result: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write :func:`score_test`'s result as ``scores.json`` and a per-case, per-class ``scores.csv``."""
    import csv
    import io

    from helpers.io import write_text_atomic

    folder = Path(folder)
    json_path = write_json(folder / "scores.json", result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "case", "class", "iou", "dice", "hd95_mm"])
    for method in ("unet", "baseline"):
        for case, s in result.get(method, {}).get("per_case", {}).items():
            for i, cls in enumerate(result["classes"]):
                writer.writerow([method, case, cls, s["iou"][i], s["dice"][i], s["hd95"][i]])
    csv_path = write_text_atomic(folder / "scores.csv", buf.getvalue())
    return json_path, csv_path


def multiotsu_baseline(image: np.ndarray, n_classes: int) -> np.ndarray:
    """Classic baseline: multi-Otsu thresholds on intensity, classes in intensity order (uint8)."""
    from skimage.filters import threshold_multiotsu

    thresholds = threshold_multiotsu(image, classes=n_classes)
    return np.digitize(image, thresholds).astype(np.uint8)
