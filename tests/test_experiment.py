"""Issue 10: a changed knob never reuses an old model; a model knows what it was trained on."""

import json
import os

import pytest
from stub_models import small_unet_stand_in

from helpers.config import get_params
from helpers.experiment import MODEL_INFO, prepare, train_from_params
from helpers.runs import RunFolderError


@pytest.mark.slow
def test_changing_a_knob_never_reuses_the_old_model(tmp_path, monkeypatch):
    import helpers.model

    monkeypatch.setattr(helpers.model, "build_unet", small_unet_stand_in)
    first = get_params("quick", "sandstone", output_dir=str(tmp_path), epochs=1, steps_per_epoch=1)
    train_from_params(first, verbose=0)
    info = json.loads((tmp_path / first["run_dir"] / MODEL_INFO).read_text())
    ds = prepare(first)
    assert info["fingerprint"] == ds.fingerprint and info["class_names"] == list(ds.class_names)
    assert info["normalisation"] == ds.normalisation and info["split"] == ds.split
    assert info["patch_size"] == [32, 32, 32] and info["training"]["learning_rate"] == first["learning_rate"]

    changed = get_params(
        "quick", "sandstone", output_dir=str(tmp_path), epochs=1, steps_per_epoch=1, learning_rate=5e-4
    )
    assert changed["run_dir"] != first["run_dir"]  # left to itself, a new model in a new folder
    before = sorted(os.listdir(first["run_dir"]))
    with pytest.raises(RunFolderError, match=r"training\.learning_rate"):
        train_from_params({**changed, "run_dir": first["run_dir"]}, verbose=0)  # forced into the old one
    assert sorted(os.listdir(first["run_dir"])) == before


def test_07_takes_a_scan_of_a_dataset_folder_on_the_working_grid_and_the_sandstone_otherwise(tmp_path):
    """Issue 22: with a dataset folder, 07 predicted a synthetic sandstone with the user's model."""
    import numpy as np

    from helpers.datasets import make_cores_dataset
    from helpers.experiment import large_input, patch_shape
    from helpers.geometry import to_working_grid
    from helpers.io import load_volume
    from helpers.zarr_volumes import open_zarr_volume, zarr_affine

    root = make_cores_dataset(tmp_path / "SandstoneCores")
    params = get_params("quick", str(root), output_dir=str(tmp_path / "out"), patch_size=(32, 32, 32))
    ds = prepare(params)  # an explicit patch: the default one imports TensorFlow (8 s) for its arithmetic
    path, chunks, budget = large_input(params, ds, tmp_path / "large")
    scan = sorted((root / "imagesTs").iterdir())[0]
    assert path.name == scan.name.split("_0000")[0] + "_working_grid.zarr"  # the case, all its channels
    image = open_zarr_volume(path)
    expected, _ = to_working_grid(load_volume(scan), ds.target_spacing)
    assert np.array_equal(image[...], expected.array.astype(np.float32))
    assert np.allclose(zarr_affine(image), expected.affine)
    patch = patch_shape(ds, params)
    for c, p, s in zip(chunks, patch, image.shape, strict=True):
        assert p <= c <= params["large_chunk"] and (c < s or s <= p)  # every axis cut where it can be
    assert budget < image.nbytes  # so the lesson's premise holds: the volume exceeds the budget

    sandstone = get_params("quick", "sandstone", output_dir=str(tmp_path / "out"))
    path, chunks, budget = large_input(sandstone, prepare(sandstone), tmp_path / "large")
    assert path.name == "sandstone_64x64x80.zarr" and chunks == (48, 48, 48) and budget == 2**20
