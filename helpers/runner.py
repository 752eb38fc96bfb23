"""Execute the course notebooks with papermill and write ``outputs/summary.md``.

``python -m helpers.runner --profile cpu`` (what ``make run`` calls) runs notebooks
00 to 06 on the sandstone phantom, then trains and evaluates the brain tissue
model (04 and 05), and writes executed notebooks to ``outputs/executed/``,
figures to ``outputs/figures/`` and a summary of held-out scores and timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers.config import OUTPUTS, REPO_ROOT, ProfileError, resolve_profile_name
from helpers.io import write_text_atomic

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


def course_plan() -> list[tuple[str, str]]:
    """(notebook, dataset) pairs in execution order: the course on the sandstone, then the brain pass."""
    present = available_notebooks()
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


def run_course(profile: str, output_dir: str | os.PathLike[str] = OUTPUTS) -> Path:
    """Execute the course for ``profile`` and return the path of ``summary.md``."""
    chosen = resolve_profile_name(profile)
    out = Path(output_dir)
    print(f"Profile: {chosen}" + (" (auto: full with a GPU, cpu without)" if profile == "auto" else ""))
    print("Override with `make run PROFILE=quick|cpu|full`.")
    timings: list[tuple[str, str, float]] = []
    plan = course_plan()
    start = time.perf_counter()
    for name, dataset in plan:
        params = {"profile": chosen, "dataset": dataset, "output_dir": str(out.resolve())}
        target = out / "executed" / f"{name}-{dataset}.ipynb"
        print(f"[{time.perf_counter() - start:7.1f} s] {name} ({dataset}) ...", flush=True)
        seconds = execute_notebook(name, params, target)
        timings.append((name, dataset, seconds))
    total = time.perf_counter() - start
    summary = write_summary(out, chosen, timings, total)
    print(f"Done in {total:.0f} s. Summary: {summary}")
    return summary


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_summary(out: Path, profile: str, timings: Sequence[tuple[str, str, float]], total: float) -> Path:
    """Write ``summary.md``: held-out IoU of the U-Net against multi-Otsu, training and timings."""
    lines = [
        "# Course run summary",
        "",
        f"- Profile: **{profile}**; finished {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        f"- Total notebook time: {total:.0f} s",
        "",
        "Scores are on the held-out slab of each volume, spatially disjoint from the training slab.",
        "",
    ]
    for metrics_file in sorted((out / "metrics").glob("*.json")):
        data = json.loads(metrics_file.read_text())
        dataset = metrics_file.stem
        ev = data.get("evaluation")
        if ev:
            unet, base = ev["unet"], ev["baseline"]
            lines += [
                f"## {dataset}: held-out IoU, U-Net against multi-Otsu",
                "",
                f"Held-out slab {ev.get('held_out_shape')} voxels; model `{ev.get('model')}`.",
                "",
                "| class | multi-Otsu IoU | U-Net IoU | U-Net Dice |",
                "|---|---|---|---|",
            ]
            for i, cls in enumerate(unet["classes"]):
                lines.append(
                    f"| {cls} | {_fmt(base['iou'][i])} | {_fmt(unet['iou'][i])} | {_fmt(unet['dice'][i])} |"
                )
            gain = unet["mean_iou"] - base["mean_iou"]
            lines += [
                f"| **mean** | **{_fmt(base['mean_iou'])}** | **{_fmt(unet['mean_iou'])}** "
                f"| **{_fmt(unet['mean_dice'])}** |",
                "",
                f"U-Net minus multi-Otsu, mean IoU: **{gain:+.3f}**",
                "",
            ]
        tr = data.get("training")
        if tr:
            lines += [
                f"Training ({dataset}): {tr.get('epochs_run')} epochs in {tr.get('seconds', 0):.0f} s, "
                f"{tr.get('seconds_per_epoch', 0):.1f} s/epoch, precision {tr.get('precision')}.",
                "",
            ]
        inf = data.get("inference")
        if inf:
            lines += [
                f"Whole-volume prediction ({dataset}, {inf.get('shape')}): "
                f"overlap 0 / no blending {inf.get('seconds_overlap0', 0):.1f} s, "
                f"overlap {inf.get('overlap')} / Gaussian {inf.get('seconds_blended', 0):.1f} s; "
                f"held-out error within 2 voxels of a seam {inf.get('seam_error_overlap0', 0):.4f} "
                f"against {inf.get('seam_error_blended', 0):.4f}.",
                "",
            ]
    lines += ["## Notebook timings", "", "| notebook | dataset | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {d} | {s:.1f} |" for n, d, s in timings]
    out.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute the course notebooks with papermill.")
    parser.add_argument("--profile", default="auto", help="quick, cpu, full or auto (default)")
    parser.add_argument("--output-dir", default=str(OUTPUTS))
    args = parser.parse_args(argv)
    try:
        run_course(args.profile, args.output_dir)
    except ProfileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
