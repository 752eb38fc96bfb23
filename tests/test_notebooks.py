"""Issue 6: every notebook's skeleton.

The course passes are in the test_course_*.py files, one file each so that ``make test``'s two
workers share them.
"""

import re
from pathlib import Path

import nbformat
import pytest

from helpers.runner import COURSE, NOTEBOOK_DIR, NotebookError, execute_notebook

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


def test_the_dataset_free_notebooks_read_no_dataset():
    """The dataset passes of ``make test`` skip them (``course_checks.DATASET_FREE``): that is only
    right while they load nothing of ``dataset``, which they pass to ``get_params`` alone."""
    from course_checks import DATASET_FREE

    for name in DATASET_FREE:
        code = [
            c.source for c in nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", 4).cells if c.cell_type == "code"
        ]
        text = "\n".join(code)
        for reader in (
            r"\bprepare\(",
            r"\bopen_dataset\(",
            r"\bensure_model\(",
            r"\bload_trained\(",
            r"\bds\.",
        ):
            assert not re.search(reader, text), (name, reader)
        uses = [line.strip() for line in text.splitlines() if re.search(r"\bdataset\b", line)]
        assert all(line.startswith(("dataset = ", "dataset,", "{k: params[k]")) for line in uses), uses


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
