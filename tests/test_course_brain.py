"""Issue 6: the course's second pass, 04-06 on the embedded brain MRI with the quick profile.

The overfit check and the resume demo of 04 are skipped here (``demos=False``): the sandstone pass runs them.
"""

import json

import pytest
from course_checks import run_clean

from helpers.config import get_params
from helpers.experiment import ModelMismatchError, load_trained, prepare
from helpers.results import write_summary
from helpers.runner import SECOND_PASS

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def brain_out(tmp_path_factory):
    return tmp_path_factory.mktemp("course-brain")


@pytest.mark.parametrize("name", SECOND_PASS)
def test_notebook_runs_with_quick_profile(brain_out, name):
    params = {"profile": "quick", "dataset": "brain", "output_dir": str(brain_out)}
    run_clean(name, params, brain_out / "executed" / f"{name}-brain.ipynb", demos=False)


def test_the_brain_pass_is_scored_and_summarised(brain_out):
    brain = json.loads((brain_out / "metrics" / "brain.json").read_text())
    assert len(brain["evaluation"]["baseline"]["iou"]) == 3
    assert "## brain" in write_summary(brain_out, "quick", [], 1.0).read_text()


def test_a_model_of_another_dataset_is_refused_naming_both(brain_out, tmp_path):
    brain_run = next((brain_out / "runs").glob("brain-quick-*"))
    # checked before the model is loaded, by load_trained, which 05, 06 and 07 call; a notebook's
    # failing cell is reported as in test_notebooks.test_a_failing_cell_names_the_notebook_and_the_cell
    sandstone = prepare(get_params("quick", "sandstone", output_dir=str(tmp_path)))
    with pytest.raises(ModelMismatchError, match=r"'brain'.*'sandstone'"):
        load_trained(brain_run, sandstone)
