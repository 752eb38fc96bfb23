"""Issues 12 and 19: the course with zero code on a dataset folder, then ``python -m helpers.predict``
on its model: new scans, a corrupt one, colliding outputs, mirroring and the largest component.

The tests run in order (``make test`` keeps a file on one worker): 04 trains the model the
tests after it use.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from course_checks import predict_in_process, run_clean

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory):
    from helpers.datasets import make_cores_dataset

    root = make_cores_dataset(tmp_path_factory.mktemp("own") / "SandstoneCores")
    return {"root": root, "out": tmp_path_factory.mktemp("own-course")}


@pytest.mark.parametrize("name", ["04_training", "05_evaluation", "06_unpatchify_visualization"])
def test_zero_code_course_on_a_dataset_folder(own_dataset, name):
    params = {"profile": "quick", "dataset": str(own_dataset["root"]), "output_dir": str(own_dataset["out"])}
    run_clean(name, params, own_dataset["out"] / "executed" / f"{name}.ipynb", demos=False)


def test_zero_code_scores_every_test_case_and_segments_every_new_scan(own_dataset):
    from helpers.datasets import open_dataset
    from helpers.io import load_volume

    out, root = own_dataset["out"], own_dataset["root"]
    run_dir = next((out / "runs").glob("SandstoneCores-quick-*"))
    ds = open_dataset(root)
    scores = json.loads((run_dir / "evaluation" / "scores.json").read_text())
    assert sorted(scores["unet"]["per_case"]) == ds.split["test"]
    assert (
        (run_dir / "evaluation" / "scores.csv").read_text().startswith("method,case,class,iou,dice,hd95_mm")
    )
    target = out / "predictions"  # 06 ran `python -m helpers.predict` on imagesTs/ into it
    executed = (out / "executed" / "06_unpatchify_visualization.ipynb").read_text()
    assert "$ python -m helpers.predict" in executed and "2 of 2 scans segmented" in executed
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


def test_predict_reports_a_corrupt_scan_and_still_segments_the_good_one(own_dataset, tmp_path, capsys):
    run_dir = next((own_dataset["out"] / "runs").glob("SandstoneCores-quick-*"))
    good = own_dataset["root"] / "imagesTs" / "core90_0000.nii.gz"
    bad = tmp_path / "broken_0000.nii.gz"
    bad.write_bytes(good.read_bytes()[:500])
    mixed = mixed_size_dicom(tmp_path / "mixed")
    code, out, err = predict_in_process(capsys, run_dir, bad, mixed, good, "-o", tmp_path / "o")
    assert code == 1
    assert str(bad) in err and "corrupt" in err
    assert str(mixed) in err and "mixes image sizes" in err
    assert (tmp_path / "o" / "core90_seg.nii.gz").exists()
    assert "1 of 3 scans segmented" in out


def test_predict_refuses_colliding_outputs_and_unknown_classes_before_running(own_dataset, tmp_path):
    run_dir = next((own_dataset["out"] / "runs").glob("SandstoneCores-quick-*"))
    good = own_dataset["root"] / "imagesTs" / "core90_0000.nii.gz"
    (tmp_path / "a").mkdir()
    twin = tmp_path / "a" / "core90.npz"
    twin.write_bytes(b"never read")
    args = [sys.executable, "-m", "helpers.predict", str(run_dir)]
    clash = subprocess.run(
        [*args, str(good), str(twin), "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=300
    )
    assert clash.returncode == 2 and "overwrite each other" in clash.stderr
    assert str(good) in clash.stderr and str(twin) in clash.stderr
    assert not (tmp_path / "o").exists()
    classes = subprocess.run(
        [*args, str(good), "-o", str(tmp_path / "o"), "--keep-largest", "9"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert classes.returncode == 2 and "--keep-largest names class(es) [9]" in classes.stderr
    assert not list((tmp_path / "o").glob("*"))


def test_predict_with_mirroring_and_largest_component(own_dataset, tmp_path, capsys):
    from scipy import ndimage

    from helpers.io import load_volume

    run_dir = next((own_dataset["out"] / "runs").glob("SandstoneCores-quick-*"))
    good = own_dataset["root"] / "imagesTs" / "core90_0000.nii.gz"
    code, _, err = predict_in_process(
        capsys, run_dir, good, "-o", tmp_path / "o", "--tta", "mirror", "--keep-largest", "1,2"
    )
    assert code == 0, err[-2000:]
    seg = load_volume(tmp_path / "o" / "core90_seg.nii.gz").array
    for c in (1, 2):
        assert ndimage.label(seg == c)[1] <= 1
    code, _, err = predict_in_process(capsys, run_dir, good, "-o", tmp_path / "x", "--keep-largest", "pore")
    assert code == 2 and "--keep-largest" in err
