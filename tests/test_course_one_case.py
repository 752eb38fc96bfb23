"""Issue 31: a folder of one labelled scan (the user's one labelled volume) through every notebook."""

import json

import pytest
from course_checks import few_cases_course

pytestmark = pytest.mark.notebooks


def test_a_folder_of_one_case_runs_through_every_notebook(tmp_path):
    out = tmp_path / "course"
    printed = few_cases_course(tmp_path / "OneCore", out, ["core00"])
    assert "(core00: train z 0-" in printed["01_data_loading"]
    evaluation = json.loads((out / "metrics" / "OneCore.json").read_text())["evaluation"]
    assert evaluation["grid"] == "working" and evaluation["cases"] == {
        "core00": evaluation["cases"]["core00"]
    }
    assert "chunks in" in printed["07_large_volumes"]
