"""Execute the course notebooks with papermill and write ``outputs/summary.md``.

``python -m helpers.runner --profile cpu`` (what ``make run`` calls) runs notebooks
00 to 06 on the sandstone phantom, then trains and evaluates the brain tissue
model (04 and 05), and writes executed notebooks to ``outputs/executed/``,
figures to ``outputs/figures/`` and a summary of test scores and timings.
``--dataset FOLDER`` (``make run DATASET=FOLDER``) runs the course on a dataset
folder of your own instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import helpers
from helpers.config import (
    OUTPUTS,
    REPO_ROOT,
    ProfileError,
    check_dataset,
    dataset_label,
    get_params,
    resolve_profile_name,
)
from helpers.results import read_records, write_summary
from helpers.runs import read_log

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
COURSE = (
    "00_setup",
    "01_data_loading",
    "02_patchify",
    "03_model",
    "04_training",
    "05_evaluation",
    "06_unpatchify_visualization",
    "07_large_volumes",
)
#: Notebooks run again on the brain dataset, so the summary reports both datasets.
SECOND_PASS = ("04_training", "05_evaluation", "06_unpatchify_visualization")


class NotebookError(RuntimeError):
    """A notebook cell failed; the message names the notebook and the cell."""


def available_notebooks() -> list[str]:
    """Course notebooks present in ``notebooks/``, in course order."""
    return [n for n in COURSE if (NOTEBOOK_DIR / f"{n}.ipynb").exists()]


def course_plan(dataset: str | None = None) -> list[tuple[str, str]]:
    """(notebook, dataset) pairs in execution order.

    By default the course on the sandstone, then the brain pass; with ``dataset``
    (an embedded name or a folder) the whole course on that dataset alone.
    """
    present = available_notebooks()
    if dataset is not None:
        return [(n, dataset) for n in present]
    return [(n, "sandstone") for n in present] + [(n, "brain") for n in SECOND_PASS if n in present]


#: Environment of the notebook kernels: what ``import helpers`` set (:data:`helpers.KERNEL_ENV`):
#: TensorFlow's C++ logging off (its INFO and WARNING lines, "cuInit: UNKNOWN ERROR (303)"
#: without a GPU, look like failures), its oneDNN kernels on x86, and on a small-memory machine
#: its threads and malloc arenas capped. A notebook's own ``import helpers`` sets the same.
KERNEL_ENV = dict(helpers.KERNEL_ENV)


#: Kernel options: what C and C++ libraries write to the process's file descriptors goes to
#: the kernel's own stderr (the log), not into cell outputs. TensorFlow 2.21 logs
#: "oneDNN custom operations are on" and "Could not find cuda drivers" through absl at
#: import whatever ``TF_CPP_MIN_LOG_LEVEL`` says; ipykernel would copy them into the notebook.
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]


def _quiet_kernel_manager(log_path: Path) -> type:
    """A Jupyter kernel manager whose kernel process writes its own stderr to ``log_path``.

    What a kernel process prints outside any cell (the "Kernel is running over TCP
    without encryption" notice, C++ library logs) then stays off the console and out of
    the executed notebook (:data:`KERNEL_ARGUMENTS`); what cells print with Python is still
    captured in the executed notebook, and errors still stop the run.
    """
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:
            with open(log_path, "ab") as log:
                kw.setdefault("stderr", log)
                kw["extra_arguments"] = [*kw.get("extra_arguments", []), *KERNEL_ARGUMENTS]
                # ipykernel stops watching file descriptors under pytest; the tests' kernels
                # run as `make run`'s do
                env = kw.get("env", os.environ)
                kw["env"] = {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}
                await super().start_kernel(**kw)

    return QuietKernelManager


def execute_notebook(
    name: str | os.PathLike[str], parameters: dict[str, Any], output_path: str | os.PathLike[str]
) -> float:
    """Run a notebook (a course name such as ``"02_patchify"`` or a path) with papermill.

    The kernel runs with :data:`KERNEL_ENV` and its process's stderr goes to
    ``<output_path>.kernel.log``. Returns the wall time in seconds. Raises
    :class:`NotebookError` naming the notebook, the failing cell and the error.
    """
    import papermill as pm

    for key, value in KERNEL_ENV.items():
        os.environ.setdefault(key, value)
    source = Path(name) if str(name).endswith(".ipynb") else NOTEBOOK_DIR / f"{name}.ipynb"
    name = source.stem
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    kernel_log = output_path.with_suffix(".kernel.log")
    kernel_log.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(source),
            str(output_path),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(source.parent),
            progress_bar=False,
            kernel_manager_class=_quiet_kernel_manager(kernel_log),
            shutdown_kernel="immediate",  # the cells are done: a graceful shutdown of a kernel
        )  # with TensorFlow loaded took 3-4 s more (2026-12-02), on every notebook
    except pm.PapermillExecutionError as err:
        raise NotebookError(
            f"{name}.ipynb failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}. Executed copy: {output_path}"
        ) from None
    except Exception as err:  # a kernel that dies or never starts: its own log says why
        raise NotebookError(
            f"{name}.ipynb stopped: {type(err).__name__}: {err}. Kernel log: {kernel_log}"
        ) from err
    return time.perf_counter() - start


class TrainingProgress:
    """Print "epoch k/n, validation IoU, ETA" lines while a notebook trains, read from ``log.csv``.

    A daemon thread polls the run's log every ``interval`` seconds; it only reads, so
    it cannot disturb the training, and it stops with :meth:`stop` (or the ``with`` block).
    """

    def __init__(self, log_path: Path, epochs: int, interval: float = 2.0) -> None:
        import threading

        self.log_path, self.epochs, self.interval = Path(log_path), int(epochs), interval
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> TrainingProgress:
        self.start = time.perf_counter()
        self.first = self.seen = self._rows()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._report()

    def _log(self) -> dict[str, list[float]]:
        try:
            return read_log(self.log_path)
        except (OSError, ValueError):  # caught mid-rename or empty: try again next time
            return {}

    def _rows(self) -> int:
        return len(self._log().get("epoch", []))

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._report()

    def _report(self) -> None:
        log = self._log()
        rows = len(log.get("epoch", []))
        if rows <= self.seen:
            return
        iou = log.get("val_mean_iou", [float("nan")])[-1]
        per_epoch = (time.perf_counter() - self.start) / (rows - self.first)
        eta = per_epoch * (self.epochs - rows)
        print(
            f"          epoch {rows}/{self.epochs}  validation IoU {iou:.3f}  ETA {eta / 60:4.1f} min",
            flush=True,
        )
        self.seen = rows


def run_course(
    profile: str, output_dir: str | os.PathLike[str] = OUTPUTS, dataset: str | None = None
) -> Path:
    """Execute the course for ``profile`` (on ``dataset`` if given) and return the path of ``summary.md``."""
    chosen = resolve_profile_name(profile)
    if dataset is not None:
        dataset = check_dataset(dataset)
    out = Path(output_dir)
    print(f"Profile: {chosen}" + (" (auto: full with a GPU, cpu without)" if profile == "auto" else ""))
    print("Override with `make run PROFILE=quick|cpu|full`.")
    timings: list[tuple[str, str, float]] = []
    plan = course_plan(dataset)
    start = time.perf_counter()
    for name, data in plan:
        params = {"profile": chosen, "dataset": data, "output_dir": str(out.resolve())}
        target = out / "executed" / f"{name}-{dataset_label(data)}.ipynb"
        print(f"[{time.perf_counter() - start:7.1f} s] {name} ({dataset_label(data)}) ...", flush=True)
        if name == "04_training":
            run = get_params(chosen, data, output_dir=params["output_dir"])
            with TrainingProgress(Path(run["run_dir"]) / "log.csv", run["epochs"]):
                seconds = execute_notebook(name, params, target)
        else:
            seconds = execute_notebook(name, params, target)
        print(
            f"[{time.perf_counter() - start:7.1f} s] {name} ({dataset_label(data)}) done in {seconds:.0f} s"
        )
        timings.append((name, dataset_label(data), seconds))
    total = time.perf_counter() - start
    summary = write_summary(out, chosen, timings, total)
    print(f"\nDone in {total:.0f} s.")
    for line in headline(out):
        print(line)
    print(f"Summary: {summary}\nFigures: {out / 'figures'}\nExecuted notebooks: {out / 'executed'}")
    return summary


def headline(out: Path) -> list[str]:
    """One line per dataset: mean test IoU of the U-Net, and of multi-Otsu where it applies."""
    lines = []
    for dataset, data in read_records(out).items():
        ev = data.get("evaluation")
        if not ev:
            continue
        line = f"{dataset}: test mean IoU {ev['unet']['mean_iou']:.3f} (U-Net)"
        if ev.get("baseline"):
            line += f" against {ev['baseline']['mean_iou']:.3f} (multi-Otsu)"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute the course notebooks with papermill.")
    parser.add_argument("--profile", default="auto", help="quick, cpu, full or auto (default)")
    parser.add_argument("--output-dir", default=str(OUTPUTS))
    parser.add_argument(
        "--dataset", default=None, help="a dataset folder (or embedded name) to run the course on"
    )
    args = parser.parse_args(argv)
    try:
        run_course(args.profile, args.output_dir, args.dataset or None)
    except ProfileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
