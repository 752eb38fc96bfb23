"""The course's glue: a dataset by parameters, its samplers, a trained model that knows what it is.

- :func:`prepare` opens ``params["dataset"]`` (an embedded name or a folder) once per
  process, aligned, resampled, normalised and split into train / val / test.
- :func:`make_samplers`: training patches (class-balanced, augmented) and a fixed,
  unbiased validation sample (no foreground oversampling).
- :func:`train_from_params` trains in ``params["run_dir"]`` and writes ``model.json``
  beside ``best.keras``: what the model was trained on and how to feed it.
- :func:`ensure_model` and :func:`load_trained` give the notebooks a model, and
  refuse one that was trained on another dataset.

Scoring lives in :mod:`helpers.evaluation`.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from helpers.config import DATASETS, get_params, model_params
from helpers.datasets import Dataset, open_dataset
from helpers.results import write_json

MODEL_INFO = "model.json"


class ModelMismatchError(ValueError):
    """A trained model used on data it was not trained for; the message says what differs."""


@lru_cache(maxsize=4)
def _open(
    dataset: str,
    shape: tuple[int, ...],
    zoom: float,
    fraction: float,
    cache: str,
    spacing: tuple[float, float, float] | None = None,
) -> Dataset:
    rest = (1.0 - fraction) / 2
    return open_dataset(
        dataset,
        target_spacing=spacing,
        sandstone_shape=shape,
        brain_zoom=zoom,
        fractions=(fraction, rest, rest),
        cache=cache,
    )


def prepare(params: dict[str, Any]) -> Dataset:
    """The dataset of ``params``: aligned, resampled, normalised, split and planned (cached per process).

    The embedded volumes are split into three slabs: the first ``1 - val_fraction``
    for training, the rest halved into validation and test; they keep their own grid.
    A dataset folder is preprocessed once into ``<output_dir>/preprocessed``
    (:mod:`helpers.case_cache`), its fingerprint taken from the cases, and the plan
    (:func:`helpers.planning.make_plan`) chooses the grid and the patch from it and the
    profile's budget; when the plan's grid is not the median native one, the folder is
    preprocessed again onto it. ``params["target_spacing"]`` (or ``dataset.json``'s)
    overrides the grid. ``ds.plan`` holds the plan; ``model.json`` stores it.
    """
    from helpers.planning import dataset_fingerprint, make_plan

    key = (
        params["dataset"],
        tuple(params["sandstone_shape"]),
        float(params["brain_zoom"]),
        1.0 - float(params["val_fraction"]),
        str(Path(params["output_dir"]) / "preprocessed"),
    )
    ds = _open(*key)
    fp = dataset_fingerprint(ds.case_stats, ds.channel_names)
    size = params["patch_size"]
    wanted = params.get("target_spacing")
    if ds.name in DATASETS:
        size = (size,) * 3 if isinstance(size, int) else size
        wanted, source = ds.target_spacing, "the embedded volume's own grid"
    elif wanted is not None:
        source = "params (target_spacing)"
    elif ds.spacing_source == "dataset.json":
        wanted, source = ds.target_spacing, "dataset.json (target_spacing)"
    else:
        source = ""
    plan = make_plan(
        fp, patch_size=size, batch_size=params["batch_size"], target_spacing=wanted, source=source
    )
    spacing = tuple(float(s) for s in plan["target_spacing"])
    if ds.name not in DATASETS and not np.allclose(spacing, ds.target_spacing):
        ds = _open(*key, spacing)
    return dataclasses.replace(ds, plan={**plan, "fingerprint": fp})


def patch_shape(ds: Dataset, params: dict[str, Any]) -> tuple[int, int, int]:
    """The model's patch (Z, Y, X) for ``ds``: a 3-tuple knob as given; an int is a cube for
    the embedded volumes and, for a folder, the voxel budget of a patch that follows the
    cases' median shape (:func:`helpers.model.default_patch_size`)."""
    if ds.plan is not None:
        return tuple(int(s) for s in ds.plan["patch_size"])  # type: ignore[return-value]
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

    def sampler(part: str, steps: int, **options: Any) -> PatchSampler:
        images, labels = ds.arrays(part)
        pairs = ds.part(part)
        whole = [c.candidates if r == (slice(None),) * 3 else None for c, r in pairs]
        return PatchSampler(
            images,
            labels,
            patch,
            params["batch_size"],
            steps,
            n_classes=ds.n_classes,
            names=[c.name for c, _ in pairs],
            candidates=whole,
            **options,
        )

    train = sampler("train", params["steps_per_epoch"], seed=0, augment=params["augmentation"])
    val = sampler(
        "val", params["val_steps"], foreground_fraction=0.0, augment=False, seed=1, resample_each_epoch=False
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
        "channel_names": list(ds.channel_names),
        "normalisation": ds.normalisation,
        "target_spacing": list(ds.target_spacing),
        "patch_size": list(patch),
        "plan": {k: v for k, v in (ds.plan or {}).items() if k != "fingerprint"},
        "split": ds.split,
        "training": {**model_params(params), "profile": params["profile"]},
    }


def start_run(params: dict[str, Any], ds: Dataset, patch: tuple[int, int, int]) -> dict[str, Any]:
    """Write ``model.json`` into ``params["run_dir"]``, or check the one there; returns it.

    Raises :class:`helpers.runs.RunFolderError` when the folder holds a model trained
    with other settings, naming what differs, so a changed knob never resumes an old run.
    """
    import json

    from helpers.runs import RunFolderError

    info = model_info(ds, params, patch)
    stored = Path(params["run_dir"]) / MODEL_INFO
    if stored.exists():
        differs = _differences(json.loads(stored.read_text()), json.loads(json.dumps(info)))
        if differs:
            raise RunFolderError(
                f"{params['run_dir']} holds a model trained with other settings "
                f"({', '.join(differs)} differ); use another run_dir "
                "(or leave run_dir unset: each setting gets its own folder)"
            )
    else:
        write_json(stored, info)
    return info


def train_from_params(
    params: dict[str, Any], callbacks: tuple = (), verbose: str | int = 2, state_every: int | None = None
) -> dict:
    """Build the U-Net and train it as ``params`` say (what 04 shows step by step).

    ``state_every`` overrides how many epochs pass between saves of the optimizer state
    (:func:`helpers.training.training_run`). Returns the history from ``log.csv``.
    Writes ``model.json`` first (:func:`start_run`).
    """
    from helpers.model import build_unet, precision_reason, replicas, set_precision, strategy_scope
    from helpers.training import STATE_EVERY, learning_rate_schedule, train

    ds = prepare(params)
    patch = patch_shape(ds, params)
    start_run(params, ds, patch)
    precision = set_precision("auto")
    with strategy_scope():
        model = build_unet(ds.n_classes, patch_size=patch, in_channels=ds.n_channels)
    batch = params["batch_size"] * replicas()
    train_data, val_data = make_samplers(ds, {**params, "batch_size": batch}, patch)
    record = {
        "precision": precision,
        "precision_reason": precision_reason(precision),
        "replicas": replicas(),
        "profile": params["profile"],
        "patch_size": list(patch),
    }
    return train(
        model,
        train_data,
        val_data,
        params["epochs"],
        params["run_dir"],
        learning_rate=learning_rate_schedule(
            params["learning_rate"],
            schedule=params["lr_schedule"],
            total_steps=params["epochs"] * params["steps_per_epoch"],
        ),
        loss=params["loss"],
        class_names=ds.class_names,
        callbacks=callbacks,
        verbose=verbose,
        record=record,
        state_every=state_every or STATE_EVERY,
    )


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


def read_model_info(run_dir: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a trained run: dataset, classes, channels, normalisation, spacing, patch."""
    import json

    info_path = Path(run_dir) / MODEL_INFO
    if not info_path.exists():
        raise ModelMismatchError(f"{run_dir} has no {MODEL_INFO}: it is not a trained course model")
    return json.loads(info_path.read_text())


def load_trained(run_dir: str | Path, ds: Dataset | None = None) -> tuple[Any, dict[str, Any]]:
    """The model in ``run_dir`` (``safe_mode=True``) and its ``model.json``.

    With ``ds``, refuses (:class:`ModelMismatchError`) a model trained on a dataset
    with other class names or another fingerprint, naming both datasets.
    """

    from helpers.model import load_model

    run_dir = Path(run_dir)
    info = read_model_info(run_dir)
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


def large_input(params: dict[str, Any], ds: Dataset, folder: str | Path) -> tuple[Path, tuple[int, ...], int]:
    """The volume notebook 07 predicts blockwise, written as a zarr store in ``folder``.

    For the embedded datasets, a sandstone of ``params["large_shape"]`` generated tile by
    tile (never whole in memory), chunked by ``params["large_chunk"]``, against a budget of
    ``params["memory_budget_mb"]``. For a dataset folder, one of its scans (the first of
    ``imagesTs/``, else the first test case) brought to the model's working grid (RAS, the
    target spacing; not normalised: :func:`helpers.distributed.predict_zarr` does that), with
    chunks of at most ``large_chunk`` that still cut every axis longer than a patch, and a
    pretended budget of half its size.

    Returns (zarr path, output chunks (Z, Y, X), budget in bytes).
    """
    from helpers.datasets import write_sandstone_zarr

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    edge = int(params["large_chunk"])
    if ds.name in DATASETS:
        path = folder / f"sandstone_{'x'.join(map(str, params['large_shape']))}.zarr"
        if not path.exists():
            write_sandstone_zarr(path, params["large_shape"], chunks=64)
        return path, (edge,) * 3, int(params["memory_budget_mb"] * 2**20)
    from helpers.datasets import load_channels
    from helpers.geometry import to_working_grid
    from helpers.predict import find_scans
    from helpers.zarr_volumes import open_zarr_volume, save_zarr_volume

    scans = ds.unlabelled or [p for case, _ in ds.part("test") for p in case.image_paths]
    name, sources = next(iter(find_scans(scans, ds.n_channels).items()))  # every channel file of one scan
    path = folder / f"{name}_working_grid.zarr"
    if not path.exists():
        volume, _ = to_working_grid(load_channels(sources), ds.target_spacing)
        save_zarr_volume(path, volume.array.astype(np.float32), volume.affine, chunks=64)
    shape = open_zarr_volume(path).shape[:3]
    patch = patch_shape(ds, params)
    chunks = tuple(min(edge, max(p, -(-s // 2))) for p, s in zip(patch, shape, strict=True))
    return path, chunks, int(np.prod(shape)) * 4 // 2
