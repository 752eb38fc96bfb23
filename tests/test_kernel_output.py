"""Issue 34: in plain Jupyter (papermill here, not helpers.runner) what C libraries write to the
kernel's file descriptors, TensorFlow's absl lines at import among them, stays out of the cells
once a notebook has imported helpers; what Python prints still shows."""

import json
import os
import subprocess
import sys

import nbformat
import pytest

CELLS = [
    "import helpers",
    "import os, sys\nos.write(2, b'I0000 written by C to fd 2\\n')\nos.write(1, b'written by C to fd 1\\n')",
    "print('printed by Python to stdout')\nprint('printed by Python to stderr', file=sys.stderr)",
    "import tensorflow as tf\nprint('TensorFlow', tf.__version__)",
]


@pytest.mark.notebooks
def test_a_plain_kernel_shows_python_output_and_no_c_library_lines(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, executed = tmp_path / "plain.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(nb, source)
    # as a student's Jupyter starts it: no course kernel options, no TensorFlow variables set
    # before helpers, and not under pytest (ipykernel does not capture descriptors there)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "PYTEST_"))}
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(source), str(executed), "--cwd", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = [
        "".join(o.get("text", ""))
        for cell in json.loads(executed.read_text())["cells"]
        for o in cell.get("outputs", [])
    ]
    shown = "".join(outputs)
    assert "printed by Python to stdout" in shown and "printed by Python to stderr" in shown
    assert "TensorFlow 2." in shown
    assert "written by C" not in shown, outputs
    assert "oneDNN" not in shown and "cuda drivers" not in shown and "I0000" not in shown, outputs
    assert "written by C to fd 2" in done.stderr  # the kernel's own stderr: the server's log
