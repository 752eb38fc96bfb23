"""Issues 12, 19 and 31: a folder of two cases (a DICOM series and a NIfTI case whose label map is
stored in another orientation) through every notebook that reads its cases, zero code (01 once
crashed on it: a slab split has no "train" key); then ``python -m helpers.predict`` on the model
04 trained: new scans, a corrupt one, colliding outputs, mirroring and the largest component.

03 and 07 are left out: they read one preprocessed case and one new NIfTI scan, which they do the
same way for every folder; ``test_course_real_export.py`` runs them on a folder of two channels.

The tests run in order on one worker (``make test``'s ``--dist loadfile``): the first runs the
course, the rest use its model.
"""

import json

import numpy as np
import pytest
from course_checks import READS_THE_DATASET, few_cases_course, predict_in_process

from helpers.results import write_summary

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def two_cases(tmp_path_factory):
    base = tmp_path_factory.mktemp("two-cases")
    root, out = base / "TwoCores", base / "course"
    reads_cases = tuple(n for n in READS_THE_DATASET if n not in ("03_model", "07_large_volumes"))
    printed = few_cases_course(root, out, ["core04", "core05"], reads_cases)
    return {
        "root": root,
        "out": out,
        "printed": printed,
        "run": next((out / "runs").glob("TwoCores-quick-*")),
    }


def test_a_folder_of_two_cases_runs_through_every_notebook(two_cases):
    printed, out = two_cases["printed"], two_cases["out"]
    assert "too few cases to split by case, so each is cut into slabs along z" in printed["01_data_loading"]
    assert "core04:" in printed["01_data_loading"] and "core05:" in printed["01_data_loading"]
    evaluation = json.loads((out / "metrics" / "TwoCores.json").read_text())["evaluation"]
    assert evaluation["grid"] == "working" and sorted(evaluation["cases"]) == ["core04", "core05"]
    summary = write_summary(out, "quick", [], 1.0).read_text()
    assert "slabs of the working grid" in summary and "Means are over the foreground classes (clay" in summary
    assert "2 of 2 scans segmented" in printed["06_unpatchify_visualization"]


def test_zero_code_scores_every_case_and_segments_every_new_scan(two_cases):
    from helpers.io import load_volume

    out, root = two_cases["out"], two_cases["root"]
    scores = json.loads((two_cases["run"] / "evaluation" / "scores.json").read_text())
    assert sorted(scores["unet"]["per_case"]) == ["core04", "core05"]  # each case's test slab
    assert (
        (two_cases["run"] / "evaluation" / "scores.csv")
        .read_text()
        .startswith("method,case,class,iou,dice,hd95_mm")
    )
    target = out / "predictions"  # 06 ran `python -m helpers.predict` on imagesTs/ into it
    assert "$ python -m helpers.predict" in two_cases["printed"]["06_unpatchify_visualization"]
    for scan in sorted((root / "imagesTs").iterdir()):
        source = load_volume(scan)
        seg = load_volume(target / f"{scan.name.split('_0000')[0]}_seg.nii.gz")
        assert seg.shape == source.shape[:3] and np.allclose(seg.affine, source.affine, atol=1e-5)
        ijk = np.argwhere(seg.array > 0)[:, ::-1]  # (x, y, z) of labelled voxels
        world = seg.affine @ np.c_[ijk, np.ones(len(ijk))].T
        back = np.linalg.inv(source.affine) @ world
        assert np.allclose(back[:3].T, ijk, atol=1e-3)  # the same voxels of the scan, in world space
    assert len(list(target.glob("*_seg.nii.gz"))) == 2


def mixed_size_dicom(folder):
    """A DICOM series whose middle slice has another size (numpy's stack once ended the batch)."""
    import pydicom

    from helpers.io import write_dicom_series

    files = sorted(write_dicom_series(folder, np.zeros((5, 40, 40), np.float32), np.eye(4)))
    ds = pydicom.dcmread(files[2])
    ds.Rows = 30
    ds.PixelData = np.zeros((30, 40), np.int16).tobytes()
    ds.save_as(files[2], enforce_file_format=True)
    return folder


def test_predict_reports_a_corrupt_scan_and_still_segments_the_good_one(two_cases, tmp_path, capsys):
    good = two_cases["root"] / "imagesTs" / "core90_0000.nii.gz"
    bad = tmp_path / "broken_0000.nii.gz"
    bad.write_bytes(good.read_bytes()[:500])
    mixed = mixed_size_dicom(tmp_path / "mixed")
    code, out, err = predict_in_process(capsys, two_cases["run"], bad, mixed, good, "-o", tmp_path / "o")
    assert code == 1
    assert str(bad) in err and "corrupt" in err
    assert str(mixed) in err and "mixes image sizes" in err
    assert (tmp_path / "o" / "core90_seg.nii.gz").exists()
    assert "1 of 3 scans segmented" in out


def test_predict_refuses_colliding_outputs_and_unknown_classes_before_running(two_cases, tmp_path, capsys):
    good = two_cases["root"] / "imagesTs" / "core90_0000.nii.gz"
    (tmp_path / "a").mkdir()
    twin = tmp_path / "a" / "core90.npz"
    twin.write_bytes(b"never read")
    out = tmp_path / "o"
    code, _, err = predict_in_process(capsys, two_cases["run"], good, twin, "-o", out)
    assert code == 2 and "overwrite each other" in err
    assert str(good) in err and str(twin) in err
    assert not out.exists()
    code, _, err = predict_in_process(capsys, two_cases["run"], good, "-o", out, "--keep-largest", "9")
    assert code == 2 and "--keep-largest names class(es) [9]" in err
    assert not list(out.glob("*"))


def test_predict_with_mirroring_and_largest_component(two_cases, tmp_path, capsys):
    from scipy import ndimage

    from helpers.io import load_volume

    good = two_cases["root"] / "imagesTs" / "core90_0000.nii.gz"
    code, _, err = predict_in_process(
        capsys, two_cases["run"], good, "-o", tmp_path / "o", "--tta", "mirror", "--keep-largest", "1,2"
    )
    assert code == 0, err[-2000:]
    seg = load_volume(tmp_path / "o" / "core90_seg.nii.gz").array
    for c in (1, 2):
        assert ndimage.label(seg == c)[1] <= 1
    code, _, err = predict_in_process(
        capsys, two_cases["run"], good, "-o", tmp_path / "x", "--keep-largest", "pore"
    )
    assert code == 2 and "--keep-largest" in err
