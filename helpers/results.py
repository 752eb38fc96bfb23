"""Results on disk: the JSON records the notebooks write, and ``summary.md`` made from them.

``<output_dir>/metrics/<dataset>.json`` holds one section per step, each a dict:
"training" (04: seconds, epochs_run, seconds_per_epoch, precision), "evaluation"
(05: part, classes, cases, unet and baseline scores, best_validation_mean_iou,
validation_cases, model) and "inference" (06: shape, overlap, seconds and seam
errors). :func:`record` merges a section in; :func:`write_summary` reads them all
back. This module is the one place that knows that layout.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers.config import dataset_label
from helpers.files import write_text_atomic
from helpers.metrics import scores_table


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(data, indent=2))


def record(params: dict[str, Any], section: str, data: dict[str, Any]) -> None:
    """Merge ``data`` under ``section`` into ``<output_dir>/metrics/<dataset>.json`` (for the summary).
    Returns nothing: a notebook cell ending with it shows no ``PosixPath(...)`` line."""
    path = Path(params["output_dir"]) / "metrics" / f"{dataset_label(params['dataset'])}.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current[section] = data
    current["profile"] = params["profile"]
    write_json(path, current)


def read_records(output_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every ``metrics/<dataset>.json`` under ``output_dir``: {dataset: {section: data}}."""
    folder = Path(output_dir) / "metrics"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


#: The baseline of thresholds fitted on the training labels (:func:`helpers.evaluation.fit_thresholds`).
FITTED = "fitted thresholds"


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_summary(out: Path, profile: str, timings: Sequence[tuple[str, str, float]], total: float) -> Path:
    """Write ``summary.md``: test scores of the U-Net and, where they apply, of multi-Otsu and of
    thresholds fitted on the training labels (the gain is against the stronger), training, timings."""
    lines = [
        "# Course run summary",
        "",
        f"- Profile: **{profile}**; finished {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        f"- Total notebook time: {total:.0f} s",
        "",
        "Each dataset is split three ways: **train** (patches to learn from), **validation** (picks the",
        "best checkpoint) and **test** (scored once, below). The test part never took part in training",
        "or in choosing the checkpoint: whole cases, or, for a dataset of one or two scans, a slab of",
        "each (each dataset's split is stated below).",
        "",
    ]
    for dataset, data in read_records(out).items():
        ev = data.get("evaluation")
        if ev:
            unet, base, fitted = ev["unet"], ev.get("baseline"), ev.get("fitted")
            cases = ", ".join(f"{name} {shape}" for name, shape in ev.get("cases", {}).items())
            methods = {"U-Net": {"classes": ev["classes"], **unet}}
            columns = [("U-Net", "iou"), ("U-Net", "dice"), ("U-Net", "hd95")]
            baselines = {n: b for n, b in (("multi-Otsu", base), (FITTED, fitted)) if b}
            for k, (name, scores) in enumerate(baselines.items()):
                methods[name] = {"classes": ev["classes"], **scores}
                columns.insert(k, (name, "iou"))
            against = " and ".join(baselines)
            lines += [
                f"## {dataset}: test scores" + (f", U-Net against {against}" if baselines else ""),
                "",
                *([f"Split: {ev['split']}."] if ev.get("split") else []),
                f"Test part: {cases} (voxels, {_grid(ev)}). Model `{ev.get('model')}`.",
                f"Best validation mean IoU (patches of {', '.join(ev.get('validation_cases', []))}, "
                f"used to pick the checkpoint): {_fmt(ev.get('best_validation_mean_iou'))}.",
                "",
                scores_table(methods, columns=columns),
                "",
            ]
            if baselines:
                name, best = max(baselines.items(), key=lambda kv: kv[1]["mean_iou"])
                lines += [
                    f"U-Net minus the stronger baseline ({name}), mean test IoU: "
                    f"**{unet['mean_iou'] - best['mean_iou']:+.3f}**",
                    "",
                ]
            else:
                lines += [f"({ev.get('baseline_note')})", ""]
            lines += [
                f"Means are over the foreground classes ({', '.join(ev['classes'][1:])}; class 0, "
                f"{ev['classes'][0]}, is reported but not averaged) and over test cases; a class absent "
                "from a case is left out of that case (n/a).",
                "HD95 is MONAI's: the larger of the two directed 95th percentiles of surface distances.",
                _missed_line(unet.get("missed") or {}),
                "",
            ]
        tr = data.get("training")
        if tr:
            lines += [
                f"Training ({dataset}): {tr.get('epochs_run')} epochs in {tr.get('seconds', 0):.0f} s, "
                f"{tr.get('seconds_per_epoch', 0):.1f} s/epoch, precision {tr.get('precision')}"
                + (f" ({tr['precision_reason']})." if tr.get("precision_reason") else "."),
                "",
            ]
        inf = data.get("inference")
        if inf:
            lines += [
                f"Whole-volume prediction ({dataset}, {inf.get('shape')}): "
                f"overlap 0 / no blending {inf.get('seconds_overlap0', 0):.1f} s, "
                f"overlap {inf.get('overlap')} / Gaussian {inf.get('seconds_blended', 0):.1f} s; "
                f"{'validation' if inf.get('part') == 'val' else 'test'} error within 2 voxels of a seam "
                f"{inf.get('seam_error_overlap0', 0):.4f} against {inf.get('seam_error_blended', 0):.4f}.",
                "",
            ]
            if inf.get("chosen"):
                chosen, test = inf["chosen"], inf.get("test", {})
                lines += [
                    f"Settings chosen on validation ({dataset}): overlap {chosen['overlap']}, "
                    f"mirroring {'on' if chosen['tta'] else 'off'}, largest component "
                    f"{_largest(chosen['keep_largest'], ev or {})}; with them the test part, "
                    f"scored once, has mean IoU {_fmt(test.get('mean_iou'))} (default settings: "
                    f"{_fmt(test.get('default_mean_iou'))}; an option was kept only for a validation gain "
                    f"above {_fmt(inf.get('margin'))}).",
                    "",
                ]
    lines += ["## Notebook timings", "", "| notebook | dataset | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {d} | {s:.1f} |" for n, d, s in timings]
    out.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")


def _largest(classes: Sequence[int], ev: dict[str, Any]) -> str:
    """The largest-component rule as chosen, naming its classes where the evaluation names them."""
    if not classes:
        return "not applied"
    names = ev.get("classes") or []
    return "kept for " + ", ".join(names[c] if c < len(names) else str(c) for c in classes)


def _missed_line(missed: dict[str, list[str]]) -> str:
    """One sentence counting the structures of the truth that the U-Net did not predict at all."""
    if not missed:
        return "U-Net missed no structure present in the truth entirely."
    listing = "; ".join(f"{case}: {', '.join(names)}" for case, names in missed.items())
    total = sum(map(len, missed.values()))
    return f"U-Net missed {total} structure(s) present in the truth entirely (Dice 0, no HD95): {listing}."


def _grid(ev: dict[str, Any]) -> str:
    """Which grid the test part was scored on, in words."""
    if ev.get("grid") == "working":
        return "slabs of the working grid, at the dataset's target spacing"
    return "each scan's native grid"
