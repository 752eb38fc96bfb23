"""Shared by the course-pass test files: execute a notebook with papermill and check every cell ran;
run the predict command in process.

The passes live in separate files so that ``make test``'s two pytest-xdist workers
(``--dist loadfile``) can run them side by side, each file's tests in order on one worker.
"""

from pathlib import Path
from typing import Any

import nbformat

from helpers.runner import COURSE, execute_notebook

#: Notebooks that read nothing of the dataset: 00 checks the installation, 02 cuts a generated
#: cube (``tests/test_notebooks.py`` checks that neither calls ``prepare``). The sandstone pass runs
#: them; a pass whose subject is a kind of dataset folder runs the rest.
DATASET_FREE = ("00_setup", "02_patchify")
READS_THE_DATASET = tuple(n for n in COURSE if n not in DATASET_FREE)

#: What TensorFlow's C++ side logs at import; none of it may reach a student's notebook.
TENSORFLOW_NOISE = ("absl", "oneDNN", "cuda drivers")


def run_clean(name: str, params: dict[str, Any], target: Path, demos: bool = True) -> float:
    """Execute notebook ``name`` with ``params`` into ``target``; assert that every cell ran
    without an error, a traceback, TensorFlow's C++ log lines or a stray path as its result.
    Returns the seconds it took.

    ``demos=False`` skips 04's overfit-one-batch check and its interrupted-and-resumed
    demo (more short fits of its model, with state commits), which the sandstone pass runs.
    """
    if name == "04_training" and not demos:
        params = {**params, "resume_demo": False, "overfit_steps": 0}
    seconds = execute_notebook(name, params, target)
    executed = nbformat.read(target, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)  # every cell ran, in order
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in code)
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if "Traceback" in o.get("text", "")]
    noise = [o["text"] for o in outputs if any(n in o.get("text", "") for n in TENSORFLOW_NOISE)]
    assert not noise, noise  # TensorFlow's C++ log stays in the kernel log (helpers.runner)
    shown = [o["data"].get("text/plain", "") for o in outputs if o.get("output_type") == "execute_result"]
    assert not [t for t in shown if t.startswith("PosixPath(")], shown  # savefig and record return nothing
    return seconds


def predict_in_process(capsys, *args) -> tuple[int, str, str]:
    """``python -m helpers.predict ARGS`` in this process, without a new interpreter and its
    TensorFlow import (06 runs the real command in every course pass):
    exit code, stdout, stderr."""
    from helpers.predict import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def few_cases_course(
    root: Path, out: Path, cases: list[str], notebooks: tuple[str, ...] = READS_THE_DATASET
) -> dict[str, str]:
    """The course, zero code, on a SandstoneCores folder of only ``cases``: too few to split by
    case, so each case is cut into slabs. A short training (1 epoch of 2 steps): what is checked
    is that the ``notebooks`` (by default every one that reads the dataset) run on such a folder,
    not the scores. Returns each notebook's printed text."""
    from helpers.datasets import make_cores_dataset

    make_cores_dataset(root, cases=cases)
    params = {
        "profile": "quick",
        "dataset": str(root),
        "output_dir": str(out),
        "epochs": 1,
        "steps_per_epoch": 2,
    }
    printed = {}
    for name in notebooks:
        target = out / "executed" / f"{name}.ipynb"
        run_clean(name, params, target, demos=False)
        cells = nbformat.read(target, as_version=4).cells
        printed[name] = "\n".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    return printed
