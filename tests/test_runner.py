"""Issue 14: what `make run` prints: one line per notebook, training progress, no kernel noise."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat

from helpers.runner import TrainingProgress
from helpers.runs import log_text

ROOT = Path(__file__).resolve().parents[1]


def test_training_progress_prints_each_new_epoch_with_iou_and_eta(tmp_path, capsys):
    log = tmp_path / "log.csv"
    rows = []

    def write_epochs():
        for epoch in range(3):
            time.sleep(0.3)
            rows.append({"epoch": epoch, "loss": 1.0, "val_mean_iou": 0.1 * (epoch + 1)})
            log.write_text(log_text(rows))

    writer = threading.Thread(target=write_epochs)
    with TrainingProgress(log, epochs=3, interval=0.05):
        writer.start()
        writer.join()
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed] == ["1/3", "2/3", "3/3"]
    assert "validation IoU 0.300" in printed[-1] and "ETA  0.0 min" in printed[-1]


def test_kernel_noise_goes_to_a_log_not_the_console(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import os, time\nos.write(2, b'KERNEL-STDERR-LINE\\n')\n"
                "time.sleep(1)\nprint('cell output')"
            )
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "noisy.ipynb")
    code = (
        "from helpers.runner import execute_notebook; "
        f"execute_notebook({str(tmp_path / 'noisy.ipynb')!r}, {{}}, {str(tmp_path / 'out.ipynb')!r})"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # as `make run` has it
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert "KERNEL-STDERR-LINE" not in console and "without encryption" not in console
    assert "KERNEL-STDERR-LINE" in (tmp_path / "out.kernel.log").read_text()
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    texts = [o.get("text", "") for o in executed.cells[-1].outputs]
    assert texts == ["cell output\n"]  # a C library's fd-2 lines stay out of the notebook too


def test_a_finished_notebook_s_kernel_is_stopped_not_asked_to_shut_down(tmp_path):
    """A graceful shutdown of a kernel with TensorFlow loaded cost 3-4 s per notebook; once
    every cell has run, nothing is left for the kernel to do, so it is stopped at once (its
    exit handlers, such as this one, never run)."""
    from helpers.runner import execute_notebook

    marker = tmp_path / "exit-handler-ran"
    code = f"import atexit, pathlib\natexit.register(pathlib.Path({str(marker)!r}).touch)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "exit.ipynb")
    execute_notebook(tmp_path / "exit.ipynb", {}, tmp_path / "out.ipynb")
    assert (tmp_path / "out.ipynb").exists() and not marker.exists()
