"""Issue 31: the whole course, zero code, on a folder as real exports ship it: two channels (FLAIR,
T1c), labels stored as float32, images already z-scored with a non-zero background, nnU-Net v2's
dataset.json with only its four required keys (the name comes from the folder).

Every notebook that reads the dataset (all but 00 and 02, ``course_checks.DATASET_FREE``), with
the quick profile; then what each one showed is checked. The tests
run in order on one worker (``make test``'s ``--dist loadfile``): 04 trains the model the rest use.
"""

import json

import nbformat
import numpy as np
import pytest
from course_checks import READS_THE_DATASET, run_clean

from helpers.runner import COURSE

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from helpers.tumours import make_tumour_dataset

    root = make_tumour_dataset(tmp_path_factory.mktemp("export") / "Dataset042_Tumour", cases=6, unlabelled=2)
    return {"root": root, "out": tmp_path_factory.mktemp("export-course")}


def outputs(export, name):
    """Every text a notebook printed, joined."""
    executed = nbformat.read(export["out"] / "executed" / f"{name}.ipynb", as_version=4)
    texts = []
    for cell in executed.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


@pytest.mark.parametrize("name", READS_THE_DATASET)
def test_every_notebook_runs_on_a_two_channel_float_label_export(export, name):
    params = {"profile": "quick", "dataset": str(export["root"]), "output_dir": str(export["out"])}
    run_clean(name, params, export["out"] / "executed" / f"{name}.ipynb", demos=False)


def test_01_prints_the_fingerprint_and_the_plan_in_millimetres(export):
    text = outputs(export, "01_data_loading")
    assert "Tumour: 6 case(s)" in text and "split: by case" in text
    assert "6 labelled case(s), 2 channel(s): FLAIR, T1c" in text
    assert "FLAIR on the foreground" in text and "T1c on the foreground" in text and " mL" in text
    assert "one patch covers 128 x 128 x 128 mm" in text and "bottleneck: 32 x 32 x 32 halved 5 times" in text
    figures = export["out"] / "figures"
    assert (figures / "01_slices_Tumour.png").exists() and (figures / "01_histogram_Tumour.png").exists()


def test_the_model_knows_its_channels_and_its_plan(export):
    run_dir = next((export["out"] / "runs").glob("Dataset042_Tumour-quick-*"))
    info = json.loads((run_dir / "model.json").read_text())
    assert info["channel_names"] == ["FLAIR", "T1c"] and info["dataset"] == "Tumour"
    assert info["plan"]["target_spacing"] == info["target_spacing"] == [4.0, 4.0, 4.0]
    assert info["plan"]["patch_size"] == info["patch_size"] == [32, 32, 32]
    assert "03_model" in COURSE and "(1, 32, 32, 32, 2)" in outputs(export, "03_model")  # 2 channels in


def test_05_scores_every_test_case_at_native_resolution_from_float_labels(export):
    run_dir = next((export["out"] / "runs").glob("Dataset042_Tumour-quick-*"))
    scores = json.loads((run_dir / "evaluation" / "scores.json").read_text())
    metrics = json.loads((export["out"] / "metrics" / "Dataset042_Tumour.json").read_text())["evaluation"]
    assert sorted(scores["unet"]["per_case"]) == sorted(metrics["cases"]) and metrics["grid"] == "native"
    assert len(scores["unet"]["iou"]) == 4  # every class is reported; the means are over the foreground
    assert 0.0 <= scores["unet"]["mean_iou"] <= 1.0


def test_06_segments_each_new_two_channel_scan_on_its_own_grid(export):
    from helpers.io import load_volume

    text = outputs(export, "06_unpatchify_visualization")
    assert "$ python -m helpers.predict" in text and "2 of 2 scans segmented" in text
    for case in ("NEW_0000", "NEW_0001"):
        seg = load_volume(export["out"] / "predictions" / f"{case}_seg.nii.gz")
        scan = load_volume(export["root"] / "imagesTs" / f"{case}_0001.nii.gz")
        assert seg.shape == scan.shape and np.allclose(seg.affine, scan.affine, atol=1e-5)


def test_07_predicts_a_two_channel_scan_blockwise(export):
    from helpers.zarr_volumes import open_zarr_volume

    large = export["out"] / "large"
    source = open_zarr_volume(next(large.glob("*_working_grid.zarr")))
    pred = open_zarr_volume(next(large.glob("*_prediction.zarr")))
    assert source.shape[3] == 2 and pred.shape == source.shape[:3]
    assert "voxels agree with in-process predict_volume" in outputs(export, "07_large_volumes")
