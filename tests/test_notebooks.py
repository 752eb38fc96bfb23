"""Issue 6: every notebook's skeleton, and a papermill run of the course with the quick profile."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from helpers.results import write_summary
from helpers.runner import COURSE, NOTEBOOK_DIR, NotebookError, course_plan, execute_notebook

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
    assert "test -d /content/course || git clone" in text  # the setup cell can run twice
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badges_and_setup_cell_use_the_one_course_address(path):
    import re

    from helpers.config import COURSE_REPO, COURSE_URL

    cells = nbformat.read(path, as_version=4).cells
    name = path.name
    assert f"colab.research.google.com/github/{COURSE_REPO}/blob/main/notebooks/{name}" in cells[0].source
    assert f"mybinder.org/v2/gh/{COURSE_REPO}/main?labpath=notebooks%2F{name}" in cells[0].source
    setup = next(c.source for c in cells if '"google.colab" in sys.modules' in c.source)
    assert COURSE_URL in setup
    text = "\n".join(c.source for c in cells)
    addresses = set(re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+)", text)) | set(
        re.findall(r"/gh/([\w.-]+/[\w.-]+)/", text)
    )
    assert addresses == {COURSE_REPO}, addresses


def test_training_notebook_shows_build_compile_and_fit():
    source = "\n".join(c.source for c in nbformat.read(NOTEBOOK_DIR / "04_training.ipynb", 4).cells)
    for call in ("build_unet(", "model.compile(", "SegmentationLoss(", "iou_metrics(", "model.fit("):
        assert call in source, call


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_define_no_functions_or_classes(path):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            assert not any(line.lstrip().startswith(("def ", "class ")) for line in cell.source.splitlines())


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    """One output folder per pass: under ``make test``'s two xdist workers the sandstone
    pass and the brain pass (each an ``xdist_group``, run in order) may run side by side."""
    out = {d: tmp_path_factory.mktemp(f"course-{d}") for d in ("sandstone", "brain")}
    return {"out": out, "timings": []}


def pass_group(dataset: str) -> pytest.MarkDecorator:
    return pytest.mark.xdist_group(f"course-{dataset}")


@pytest.mark.notebooks
@pytest.mark.parametrize(
    ("name", "dataset"),
    [pytest.param(n, d, marks=pass_group(d), id=f"{n}-{d}") for n, d in course_plan()],
)
def test_notebook_runs_with_quick_profile(course_run, name, dataset):
    out = course_run["out"][dataset]
    target = out / "executed" / f"{name}-{dataset}.ipynb"
    seconds = execute_notebook(name, {"profile": "quick", "dataset": dataset, "output_dir": str(out)}, target)
    course_run["timings"].append((name, dataset, seconds))
    executed = nbformat.read(target, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)  # every cell ran, in order
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in code)
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if "Traceback" in o.get("text", "")]


@pytest.mark.notebooks
@pass_group("sandstone")
def test_course_outputs_and_summary(course_run):
    out = course_run["out"]["sandstone"]
    sand = json.loads((out / "metrics" / "sandstone.json").read_text())
    assert {"evaluation", "training", "inference"} <= set(sand)
    assert len(sand["evaluation"]["unet"]["iou"]) == 4
    summary = write_summary(out, "quick", course_run["timings"], 1.0).read_text()
    assert "| class | multi-Otsu IoU | U-Net IoU | U-Net Dice |" in summary
    assert "## sandstone" in summary
    assert len(list((out / "figures").glob("*.png"))) >= 10


@pytest.mark.notebooks
@pass_group("brain")
def test_the_brain_pass_is_scored_and_summarised(course_run):
    out = course_run["out"]["brain"]
    brain = json.loads((out / "metrics" / "brain.json").read_text())
    assert len(brain["evaluation"]["baseline"]["iou"]) == 3
    assert "## brain" in write_summary(out, "quick", course_run["timings"], 1.0).read_text()


@pytest.mark.notebooks
@pass_group("sandstone")
def test_summary_reports_test_scores_and_says_which_part_is_which(course_run):
    out = course_run["out"]["sandstone"]
    summary = write_summary(out, "quick", course_run["timings"], 1.0).read_text()
    assert "## sandstone: test scores, U-Net against multi-Otsu" in summary
    assert "**validation** (picks the" in summary and "**test** (scored once" in summary
    sand = json.loads((out / "metrics" / "sandstone.json").read_text())["evaluation"]
    assert sand["part"] == "test" and "sandstone" in sand["cases"]
    assert len(sand["unet"]["hd95"]) == 4 and any(v is not None for v in sand["unet"]["hd95"])
    assert "HD95 is MONAI's" in summary and "missed" in summary and "missed" in sand["unet"]


@pytest.mark.notebooks
@pass_group("brain")
def test_a_model_of_another_dataset_is_refused_naming_both(course_run, tmp_path):
    out = course_run["out"]["brain"]
    brain_run = next((out / "runs").glob("brain-quick-*"))
    params = {"profile": "quick", "dataset": "sandstone", "output_dir": str(out), "run_dir": str(brain_run)}
    with pytest.raises(NotebookError, match=r"ModelMismatchError.*'brain'.*'sandstone'"):
        execute_notebook("05_evaluation", params, tmp_path / "05-mismatch.ipynb")


@pytest.mark.notebooks
@pass_group("sandstone")
def test_saved_prediction_reloads_with_the_source_affine(course_run):
    from helpers.io import load_volume

    folder = course_run["out"]["sandstone"] / "predictions"
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


@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory):
    from helpers.datasets import make_cores_dataset

    root = make_cores_dataset(tmp_path_factory.mktemp("own") / "SandstoneCores")
    return {"root": root, "out": tmp_path_factory.mktemp("own-course")}


own_group = pytest.mark.xdist_group("own-dataset")  # 04 trains the model the tests after it use


@pytest.mark.notebooks
@own_group
@pytest.mark.parametrize("name", ["04_training", "05_evaluation", "06_unpatchify_visualization"])
def test_zero_code_course_on_a_dataset_folder(own_dataset, name):
    params = {"profile": "quick", "dataset": str(own_dataset["root"]), "output_dir": str(own_dataset["out"])}
    execute_notebook(name, params, own_dataset["out"] / "executed" / f"{name}.ipynb")


@pytest.mark.notebooks
@own_group
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
    target = out / "cli"
    done = subprocess.run(
        [sys.executable, "-m", "helpers.predict", str(run_dir), str(root / "imagesTs"), "-o", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 of 2 scans segmented" in done.stdout
    for scan in sorted((root / "imagesTs").iterdir()):
        source = load_volume(scan)
        seg = load_volume(target / f"{scan.name.split('_0000')[0]}_seg.nii.gz")
        assert seg.shape == source.shape[:3] and np.allclose(seg.affine, source.affine, atol=1e-5)
        ijk = np.argwhere(seg.array > 0)[:, ::-1]  # (x, y, z) of labelled voxels
        world = seg.affine @ np.c_[ijk, np.ones(len(ijk))].T
        back = np.linalg.inv(source.affine) @ world
        assert np.allclose(back[:3].T, ijk, atol=1e-3)  # the same voxels of the scan, in world space
    assert sorted(p.name for p in (out / "predictions").glob("*_seg.nii.gz")) == sorted(
        p.name for p in target.glob("*_seg.nii.gz")
    )  # 06 went through the same code path


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


@pytest.mark.notebooks
@own_group
def test_predict_reports_a_corrupt_scan_and_still_segments_the_good_one(own_dataset, tmp_path):
    run_dir = next((own_dataset["out"] / "runs").glob("SandstoneCores-quick-*"))
    good = own_dataset["root"] / "imagesTs" / "core90_0000.nii.gz"
    bad = tmp_path / "broken_0000.nii.gz"
    bad.write_bytes(good.read_bytes()[:500])
    mixed = mixed_size_dicom(tmp_path / "mixed")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "helpers.predict",
            str(run_dir),
            str(bad),
            str(mixed),
            str(good),
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert str(bad) in done.stderr and "corrupt" in done.stderr
    assert str(mixed) in done.stderr and "mixes image sizes" in done.stderr
    assert (tmp_path / "o" / "core90_seg.nii.gz").exists()
    assert "1 of 3 scans segmented" in done.stdout


@pytest.mark.notebooks
@own_group
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


@pytest.mark.notebooks
@own_group
def test_predict_with_mirroring_and_largest_component(own_dataset, tmp_path):
    from scipy import ndimage

    from helpers.io import load_volume

    run_dir = next((own_dataset["out"] / "runs").glob("SandstoneCores-quick-*"))
    good = own_dataset["root"] / "imagesTs" / "core90_0000.nii.gz"
    args = [sys.executable, "-m", "helpers.predict", str(run_dir), str(good), "-o"]
    done = subprocess.run(
        [*args, str(tmp_path / "o"), "--tta", "mirror", "--keep-largest", "1,2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seg = load_volume(tmp_path / "o" / "core90_seg.nii.gz").array
    for c in (1, 2):
        assert ndimage.label(seg == c)[1] <= 1
    bad = subprocess.run(
        [*args, str(tmp_path / "x"), "--keep-largest", "pore"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--keep-largest" in bad.stderr


@pytest.mark.notebooks
@pytest.mark.parametrize("n_cases", [1, 2])
def test_a_dataset_of_one_or_two_cases_runs_through_training_evaluation_and_prediction(tmp_path, n_cases):
    from test_dataset_folder import blob_case, write_nifti

    root = tmp_path / f"Few{n_cases}"
    for k in range(n_cases):
        image, labels = blob_case(k, (40, 36, 36))
        labels[2:38, 10:26, 12:24] = 1  # an organ through every slice, so that every slab holds some
        image = (labels * 200 + image % 40 - 100).astype(np.int16)
        write_nifti(root / "imagesTr" / f"scan{k}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"scan{k}.nii.gz", labels)
    spec = {"name": f"Few{n_cases}", "modality": "CT", "labels": {"background": 0, "organ": 1}}
    (root / "dataset.json").write_text(json.dumps(spec))
    out = tmp_path / "course"
    params = {"profile": "quick", "dataset": str(root), "output_dir": str(out)}
    for name in ("04_training", "05_evaluation", "06_unpatchify_visualization"):
        execute_notebook(name, params, out / "executed" / f"{name}.ipynb")
    evaluation = json.loads((out / "metrics" / f"Few{n_cases}.json").read_text())["evaluation"]
    assert evaluation["grid"] == "working" and sorted(evaluation["cases"]) == [
        f"scan{k}" for k in range(n_cases)
    ]
    summary = write_summary(out, "quick", [], 1.0).read_text()
    assert (
        "slabs of the working grid" in summary and "Means are over the foreground classes (organ" in summary
    )
