"""Issue 31: a real two-case CT folder, a DICOM series and a NIfTI case whose label map is stored in
another orientation, through every notebook (01 once crashed on it: a slab split has no "train" key).
"""

import json

import pytest
from course_checks import few_cases_course

from helpers.results import write_summary

pytestmark = pytest.mark.notebooks


def test_a_folder_of_two_cases_runs_through_every_notebook(tmp_path):
    out = tmp_path / "course"
    printed = few_cases_course(tmp_path / "TwoCores", out, ["core04", "core05"])
    assert "too few cases to split by case, so each is cut into slabs along z" in printed["01_data_loading"]
    assert "core04:" in printed["01_data_loading"] and "core05:" in printed["01_data_loading"]
    evaluation = json.loads((out / "metrics" / "TwoCores.json").read_text())["evaluation"]
    assert evaluation["grid"] == "working" and sorted(evaluation["cases"]) == ["core04", "core05"]
    summary = write_summary(out, "quick", [], 1.0).read_text()
    assert "slabs of the working grid" in summary and "Means are over the foreground classes (clay" in summary
    assert "2 of 2 scans segmented" in printed["06_unpatchify_visualization"]
