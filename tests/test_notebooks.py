"""Issue 6: every notebook's skeleton, and a papermill run of the course with the quick profile."""

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest

from helpers.runner import COURSE, NOTEBOOK_DIR, NotebookError, course_plan, execute_notebook, write_summary

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_all_course_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == list(COURSE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    text = "\n".join(c.source for c in cells)
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert "Learning objectives" in cells[0].source
    assert "colab.research.google.com" in cells[0].source and "mybinder.org" in cells[0].source
    assert '"google.colab" in sys.modules' in text
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for knob in (
        "profile",
        "dataset",
        "patch_size",
        "overlap",
        "epochs",
        "batch_size",
        "steps_per_epoch",
        "run_dir",
    ):
        assert f"{knob} = " in tagged[0].source, knob
    assert "## Check your understanding" in text and "<details>" in text
    assert cells[-1].source.startswith("## Summary")
    assert all(not c.get("outputs") and not c.get("execution_count") for c in cells if c.cell_type == "code")


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    return {"out": tmp_path_factory.mktemp("course"), "timings": []}


@pytest.mark.notebooks
@pytest.mark.parametrize(("name", "dataset"), course_plan(), ids=lambda v: v)
def test_notebook_runs_with_quick_profile(course_run, name, dataset):
    out = course_run["out"]
    target = out / "executed" / f"{name}-{dataset}.ipynb"
    seconds = execute_notebook(name, {"profile": "quick", "dataset": dataset, "output_dir": str(out)}, target)
    course_run["timings"].append((name, dataset, seconds))
    executed = nbformat.read(target, as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")


@pytest.mark.notebooks
def test_course_outputs_and_summary(course_run):
    out = course_run["out"]
    sand = json.loads((out / "metrics" / "sandstone.json").read_text())
    assert {"evaluation", "training", "inference"} <= set(sand)
    assert len(sand["evaluation"]["unet"]["iou"]) == 4
    brain = json.loads((out / "metrics" / "brain.json").read_text())
    assert len(brain["evaluation"]["baseline"]["iou"]) == 3
    summary = write_summary(out, "quick", course_run["timings"], 1.0).read_text()
    assert "| class | multi-Otsu IoU | U-Net IoU | U-Net Dice |" in summary
    assert "## sandstone" in summary and "## brain" in summary
    assert len(list((out / "figures").glob("*.png"))) >= 10


@pytest.mark.notebooks
def test_saved_prediction_reloads_with_the_source_affine(course_run):
    from helpers.io import load_volume

    folder = course_run["out"] / "predictions"
    pred = load_volume(folder / "sandstone_prediction.nii.gz")
    image = load_volume(folder / "sandstone_image.nii.gz")
    assert np.allclose(pred.affine, image.affine)
    assert pred.array.shape == image.array.shape and pred.array.dtype == np.uint8


def test_a_failing_cell_names_the_notebook_and_the_cell(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("x = 1"),
            nbformat.v4.new_code_cell("raise ValueError('boom')"),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "broken.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(NotebookError, match=r"broken\.ipynb failed in cell 1.*ValueError: boom"):
        execute_notebook(src, {}, tmp_path / "out.ipynb")
    assert Path(tmp_path / "out.ipynb").exists()
