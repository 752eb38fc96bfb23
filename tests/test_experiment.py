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
