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

from helpers.config import (
    OUTPUTS,
    REPO_ROOT,
    ProfileError,
    check_dataset,
    dataset_label,
    resolve_profile_name,
)
from helpers.results import write_summary

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
COURSE = (
    "00_setup",
    "01_data_loading",
    "02_patchify",
    "03_model",
    "04_training",
    "05_evaluation",
    "06_unpatchify_visualization",
)
#: Notebooks run again on the brain dataset, so the summary reports both datasets.
SECOND_PASS = ("04_training", "05_evaluation")


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


def execute_notebook(
    name: str | os.PathLike[str], parameters: dict[str, Any], output_path: str | os.PathLike[str]
) -> float:
    """Run a notebook (a course name such as ``"02_patchify"`` or a path) with papermill.

    Returns the wall time in seconds. Raises :class:`NotebookError` naming the
    notebook, the failing cell and the error.
    """
    import papermill as pm

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    source = Path(name) if str(name).endswith(".ipynb") else NOTEBOOK_DIR / f"{name}.ipynb"
    name = source.stem
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(source),
            str(output_path),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(source.parent),
            progress_bar=False,
        )
    except pm.PapermillExecutionError as err:
        raise NotebookError(
            f"{name}.ipynb failed in cell {err.cell_index} (execution count {err.exec_count}): "
            f"{err.ename}: {err.evalue}. Executed copy: {output_path}"
        ) from None
    return time.perf_counter() - start


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
        seconds = execute_notebook(name, params, target)
        timings.append((name, dataset_label(data), seconds))
    total = time.perf_counter() - start
    summary = write_summary(out, chosen, timings, total)
    print(f"Done in {total:.0f} s. Summary: {summary}")
    return summary


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
