"""Issue 31: a folder of one labelled scan (the user's one labelled volume), zero code, through the
notebooks whose work depends on the split: 01 (the slabs it prints), 04 (training on one case's
slabs), 05 (scoring its test slab) and 06 (choosing on its validation slab, scoring the test slab
once, segmenting the new scans). 03 and 07 read a folder of one case as they read any other
(``test_course_real_export.py`` runs them): one case's image, the first new scan.
"""

import json

import pytest
from course_checks import few_cases_course

pytestmark = pytest.mark.notebooks

SPLIT_DEPENDENT = ("01_data_loading", "04_training", "05_evaluation", "06_unpatchify_visualization")


def test_a_folder_of_one_case_runs_through_every_notebook_that_splits_it(tmp_path):
    out = tmp_path / "course"
    printed = few_cases_course(tmp_path / "OneCore", out, ["core00"], SPLIT_DEPENDENT)
    assert "(core00: train z 0-" in printed["01_data_loading"]
    evaluation = json.loads((out / "metrics" / "OneCore.json").read_text())["evaluation"]
    assert evaluation["grid"] == "working" and evaluation["cases"] == {
        "core00": evaluation["cases"]["core00"]
    }
    inference = json.loads((out / "metrics" / "OneCore.json").read_text())["inference"]
    assert inference["part"] == "val" and inference["test"]["reads"] == 1
    assert "2 of 2 scans segmented" in printed["06_unpatchify_visualization"]
