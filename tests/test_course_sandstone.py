"""Issue 6: the course's first pass, every notebook on the embedded sandstone with the quick profile."""

import json

import nbformat
import numpy as np
import pytest
from course_checks import run_clean

from helpers.results import write_summary
from helpers.runner import course_plan

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    return {"out": tmp_path_factory.mktemp("course-sandstone"), "timings": []}


@pytest.mark.parametrize("name", [n for n, d in course_plan() if d == "sandstone"])
def test_notebook_runs_with_quick_profile(course_run, name):
    out = course_run["out"]
    params = {"profile": "quick", "dataset": "sandstone", "output_dir": str(out)}
    seconds = run_clean(name, params, out / "executed" / f"{name}-sandstone.ipynb")
    course_run["timings"].append((name, "sandstone", seconds))


def test_course_outputs_and_summary(course_run):
    out = course_run["out"]
    sand = json.loads((out / "metrics" / "sandstone.json").read_text())
    assert {"evaluation", "training", "inference"} <= set(sand)
    assert len(sand["evaluation"]["unet"]["iou"]) == 4
    summary = write_summary(out, "quick", course_run["timings"], 1.0).read_text()
    assert "| class | multi-Otsu IoU | fitted thresholds IoU | U-Net IoU | U-Net Dice |" in summary
    assert "## sandstone" in summary
    assert len(list((out / "figures").glob("*.png"))) >= 10


def test_summary_reports_test_scores_and_says_which_part_is_which(course_run):
    out = course_run["out"]
    summary = write_summary(out, "quick", course_run["timings"], 1.0).read_text()
    assert "## sandstone: test scores, U-Net against multi-Otsu and fitted thresholds" in summary
    assert "**validation** (picks the" in summary and "**test** (scored once" in summary
    sand = json.loads((out / "metrics" / "sandstone.json").read_text())["evaluation"]
    assert sand["part"] == "test" and sand["split"].startswith("by case: train core")
    assert sand["cases"] and all(name.startswith("core") for name in sand["cases"])  # whole cores
    assert "fitted" in sand and "the stronger baseline" in summary and "Split: by case" in summary
    assert len(sand["unet"]["hd95"]) == 4 and any(v is not None for v in sand["unet"]["hd95"])
    assert "HD95 is MONAI's" in summary and "missed" in summary and "missed" in sand["unet"]


def test_saved_prediction_reloads_with_the_source_affine(course_run):
    from helpers.io import load_volume

    folder = course_run["out"] / "predictions"
    pred = load_volume(folder / "sandstone_prediction.nii.gz")
    image = load_volume(folder / "sandstone_image.nii.gz")
    assert np.allclose(pred.affine, image.affine)
    assert pred.array.shape == image.array.shape and pred.array.dtype == np.uint8


def test_06_chooses_on_validation_and_scores_the_test_part_once(course_run):
    """06 measures overlap, mirroring and the largest component on the validation part, then
    scores the test part exactly once with what it chose (``Dataset.reads`` counts the reads)."""
    out = course_run["out"]
    inference = json.loads((out / "metrics" / "sandstone.json").read_text())["inference"]
    assert inference["part"] == "val"
    assert set(inference["chosen"]) == {"overlap", "tta", "keep_largest"}
    assert inference["test"]["reads"] == 1 and 0 <= inference["test"]["mean_iou"] <= 1
    executed = nbformat.read(out / "executed" / "06_unpatchify_visualization-sandstone.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert printed.count("test mean IoU") == 1 and "validation mean IoU" in printed  # one test line
    assert "default settings" in printed and "chosen settings" in printed  # side by side
    assert "margin" in printed and ("within the margin" in printed or "more than the margin" in printed)
    assert inference["test"]["default_mean_iou"] is not None and inference["margin"] >= 0.005
    summary = write_summary(out, "quick", course_run["timings"], 1.0).read_text()
    assert "Settings chosen on validation (sandstone)" in summary and "scored once" in summary
