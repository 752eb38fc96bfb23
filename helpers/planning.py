"""From data to plan, as nnU-Net does it: a dataset's fingerprint, then the grid, patch and batch.

:func:`case_statistics` measures one case while it is preprocessed (its grid, its
classes in mL, its foreground's extent in mm, each channel's intensities on the
foreground). :func:`dataset_fingerprint` takes the medians over the cases, and
:func:`make_plan` decides from them and the profile's budget (a patch of ``patch_size``³
voxels, ``batch_size`` patches) on which grid to train:

- at the median native spacing, when one patch sees enough of a case there: at least a
  quarter of the median case's volume (nnU-Net's threshold for a low-resolution stage),
  or the whole extent of the median case's foreground;
- otherwise on a coarser grid (nnU-Net's ``3d_lowres``), coarsened just enough that a
  patch sees one of the two, at most :data:`MAX_COARSENING` times the finest spacing.

``params["target_spacing"]`` or ``dataset.json``'s ``target_spacing`` overrides the
choice. :func:`describe_plan` says it in words: millimetres per patch, the fraction of
the case and of its foreground, the bottleneck's size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: nnU-Net's rule: below this fraction of the median case's volume in one patch, plan a coarser grid.
CASE_FRACTION = 0.25
#: The coarsest grid the plan chooses, as a multiple of the finest native spacing.
MAX_COARSENING = 4.0
#: Voxels sampled per channel for a case's intensity statistics.
SAMPLES = 20_000
#: The U-Net halves the patch this many times (a ResNet-18 encoder).
DOWNSAMPLINGS = 5


def case_statistics(
    image: np.ndarray, classes: np.ndarray, spacing: Sequence[float], n_classes: int, *, seed: int = 0
) -> dict[str, Any]:
    """One case's fingerprint, on a RAS grid of ``spacing`` (Z, Y, X mm).

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X[, C]), float
    classes : ndarray, shape (Z, Y, X), uint8 class indices
    spacing : 3 floats, mm
    n_classes : int

    Returns
    -------
    dict
        ``shape`` and ``spacing`` (Z, Y, X), ``class_ml`` (mL per class),
        ``foreground_mm`` (the foreground's bounding box, Z, Y, X mm; 0 without one) and
        ``channels``: per channel, ``mean``, ``std``, ``p00_5``, ``p50``, ``p99_5`` of the
        foreground and ``background_mean``.

    Example
    -------
    >>> lab = np.zeros((8, 8, 8), np.uint8); lab[2:6, 2:4, 3] = 1
    >>> s = case_statistics(np.ones((8, 8, 8)), lab, (2.0, 1.0, 1.0), 2)
    >>> s["foreground_mm"], s["class_ml"][1]
    ([8.0, 2.0, 1.0], 0.016)
    """
    spacing = [float(s) for s in spacing]
    voxel_ml = math.prod(spacing) / 1000.0
    counts = np.bincount(classes.ravel(), minlength=n_classes)[:n_classes]
    fg = classes > 0
    extent = [0.0, 0.0, 0.0]
    if fg.any():
        for axis in range(3):
            along = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
            extent[axis] = float(along[-1] - along[0] + 1) * spacing[axis]
    rng = np.random.default_rng(seed)
    channels = image[..., None] if image.ndim == 3 else image
    inside, outside = np.flatnonzero(fg), np.flatnonzero(~fg)
    pick = rng.choice(inside, min(SAMPLES, inside.size), replace=False) if inside.size else inside
    rest = rng.choice(outside, min(SAMPLES, outside.size), replace=False) if outside.size else outside
    stats = []
    for c in range(channels.shape[-1]):
        flat = channels[..., c].reshape(-1)
        values = flat[pick].astype(np.float64) if pick.size else flat[rest].astype(np.float64)
        lo, mid, hi = np.percentile(values, [0.5, 50, 99.5])
        stats.append(
            {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "p00_5": float(lo),
                "p50": float(mid),
                "p99_5": float(hi),
                "background_mean": float(flat[rest].mean()) if rest.size else 0.0,
            }
        )
    return {
        "shape": [int(s) for s in classes.shape],
        "spacing": spacing,
        "class_ml": [round(float(n) * voxel_ml, 3) for n in counts],
        "foreground_mm": extent,
        "channels": stats,
    }


def dataset_fingerprint(
    cases: Mapping[str, Mapping[str, Any]], channel_names: Sequence[str]
) -> dict[str, Any]:
    """Medians over the cases of :func:`case_statistics`: the dataset at a glance.

    Returns ``cases``, ``channels`` (names), ``median_shape`` and ``median_spacing``
    (Z, Y, X; native voxels and mm), ``median_extent_mm``, ``anisotropy`` (coarsest over
    finest median spacing), ``median_foreground_mm``, ``class_ml`` (median mL per class)
    and ``intensity`` (per channel: medians of the cases' foreground statistics).
    """
    stats = list(cases.values())

    def median(key: str) -> list[float]:
        return [float(v) for v in np.median([s[key] for s in stats], axis=0)]

    shape, spacing = median("shape"), median("spacing")
    intensity = {
        name: {k: float(np.median([s["channels"][c][k] for s in stats])) for k in stats[0]["channels"][c]}
        for c, name in enumerate(channel_names)
    }
    return {
        "cases": len(stats),
        "channels": list(channel_names),
        "median_shape": [int(round(s)) for s in shape],
        "median_spacing": spacing,
        "median_extent_mm": [a * b for a, b in zip(shape, spacing, strict=True)],
        "anisotropy": max(spacing) / min(spacing),
        "median_foreground_mm": median("foreground_mm"),
        "class_ml": median("class_ml"),
        "intensity": intensity,
    }


def _coverage(patch: Sequence[int], spacing: Sequence[float], fp: Mapping[str, Any]) -> tuple[float, bool]:
    """(fraction of the median case's volume, whether the foreground's extent fits) for one patch."""
    mm = [p * s for p, s in zip(patch, spacing, strict=True)]
    case = fp["median_extent_mm"]
    fraction = math.prod(min(a, b) / b for a, b in zip(mm, case, strict=True))
    fits = all(a >= b for a, b in zip(mm, fp["median_foreground_mm"], strict=True))
    return fraction, fits


def default_patch_size(shape: tuple[int, int, int] | list[int], side: int = 64) -> tuple[int, int, int]:
    """A patch (Z, Y, X) for volumes of ``shape`` with at most ``side``³ voxels, sides multiples of 32.

    Axes shorter than ``side`` shrink to their length rounded up to 32, and the voxels
    saved go to the longest axes, so a thin scan gets fewer slices and more in-plane
    voxels instead of padding.

    Example
    -------
    >>> default_patch_size((20, 256, 256), 64)
    (32, 128, 64)
    """
    budget = side**3
    limit = [max(32, -(-int(s) // 32) * 32) for s in shape]
    patch = [min(side, lim) for lim in limit]
    grown = True
    while grown:
        grown = False
        for axis in sorted(range(3), key=lambda a: -int(shape[a])):
            bigger = patch.copy()
            bigger[axis] += 32
            if bigger[axis] <= limit[axis] and bigger[0] * bigger[1] * bigger[2] <= budget:
                patch, grown = bigger, True
                break
    return tuple(patch)  # type: ignore[return-value]


def _patch(
    fp: Mapping[str, Any], spacing: Sequence[float], size: int | Sequence[int]
) -> tuple[int, int, int]:
    if not isinstance(size, int):
        return tuple(int(s) for s in size)  # type: ignore[return-value]
    shape = [e / s for e, s in zip(fp["median_extent_mm"], spacing, strict=True)]
    return default_patch_size(tuple(int(math.ceil(s)) for s in shape), size)


def make_plan(
    fp: Mapping[str, Any],
    *,
    patch_size: int | Sequence[int],
    batch_size: int,
    target_spacing: Sequence[float] | None = None,
    source: str = "",
) -> dict[str, Any]:
    """The training plan for a dataset of fingerprint ``fp`` (:func:`dataset_fingerprint`).

    Parameters
    ----------
    fp : dict
    patch_size : int or 3 ints
        The profile's budget: an int is a patch of at most ``patch_size``³ voxels that
        follows the median case's shape; 3 ints are taken as they are.
    batch_size : int
    target_spacing : 3 floats, optional
        A spacing set by hand (Z, Y, X mm); ``source`` says who set it.

    Returns
    -------
    dict
        ``target_spacing`` (Z, Y, X mm), ``patch_size`` (Z, Y, X voxels), ``batch_size``,
        ``patch_mm``, ``case_fraction``, ``foreground_fraction`` (per axis),
        ``bottleneck`` (voxels), ``coarsened`` (the factor over native, 1.0 if none),
        ``native_case_fraction``, ``native_patch_mm`` and ``reason``.

    Example
    -------
    >>> fp = {"median_spacing": [1.0] * 3, "median_extent_mm": [155.0, 240.0, 240.0],
    ...       "median_foreground_mm": [70.0, 80.0, 75.0]}
    >>> plan = make_plan(fp, patch_size=32, batch_size=8)
    >>> plan["target_spacing"], plan["patch_mm"]
    ([2.5, 2.5, 2.5], [80.0, 80.0, 80.0])
    """
    native = [float(s) for s in fp["median_spacing"]]
    native_patch = _patch(fp, native, patch_size)
    native_fraction, native_fits = _coverage(native_patch, native, fp)
    factor, reason = 1.0, "set by hand"
    if target_spacing is not None:
        spacing = [float(s) for s in target_spacing]
        reason = f"set by {source or 'hand'}"
    elif native_fraction >= CASE_FRACTION or native_fits:
        spacing = native
        reason = "native: a patch sees " + (
            f"{_pct(native_fraction)} of the median case"
            if native_fraction >= CASE_FRACTION
            else "all the foreground"
        )
    else:
        finest = min(native)
        while factor < MAX_COARSENING:
            factor = min(MAX_COARSENING, round(factor + 0.05, 2))
            spacing = [max(s, factor * finest) for s in native]
            fraction, fits = _coverage(_patch(fp, spacing, patch_size), spacing, fp)
            if fraction >= CASE_FRACTION or fits:
                break
        spacing = [round(s, 3) for s in spacing]
        reason = (
            f"coarsened {factor:.2f}x: at the native spacing a patch sees only {_pct(native_fraction)} "
            "of the median case and not all its foreground"
        )
    patch = _patch(fp, spacing, patch_size)
    mm = [round(p * s, 1) for p, s in zip(patch, spacing, strict=True)]
    fraction, _ = _coverage(patch, spacing, fp)
    fg = fp["median_foreground_mm"]
    return {
        "target_spacing": spacing,
        "patch_size": list(patch),
        "batch_size": int(batch_size),
        "patch_mm": mm,
        "case_fraction": round(fraction, 4),
        "foreground_fraction": [round(min(a / b, 1.0), 3) if b else 1.0 for a, b in zip(mm, fg, strict=True)],
        "bottleneck": [p // 2**DOWNSAMPLINGS for p in patch],
        "coarsened": round(max(s / n for s, n in zip(spacing, native, strict=True)), 3),
        "native_spacing": native,
        "native_patch_mm": [round(p * s, 1) for p, s in zip(native_patch, native, strict=True)],
        "native_case_fraction": round(native_fraction, 4),
        "reason": reason,
    }


def _pct(fraction: float) -> str:
    """A fraction as a percentage, with a decimal below 1 % (so 0.4 % is not printed as 0 %)."""
    return f"{fraction:.1%}" if fraction < 0.01 else f"{fraction:.0%}"


def _xyz(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    return " x ".join(fmt.format(v) for v in values)


def describe_fingerprint(fp: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """The fingerprint in a few lines of plain words."""
    lines = [
        f"{fp['cases']} labelled case(s), {len(fp['channels'])} channel(s): {', '.join(fp['channels'])}",
        f"median case {_xyz(fp['median_shape'])} voxels at {_xyz(fp['median_spacing'], '{:.2f}')} mm "
        f"= {_xyz(fp['median_extent_mm'])} mm (Z, Y, X); anisotropy {fp['anisotropy']:.1f}",
        f"median foreground extent {_xyz(fp['median_foreground_mm'])} mm",
        "median class volumes: "
        + ", ".join(f"{n} {v:.1f} mL" for n, v in zip(class_names, fp["class_ml"], strict=True)),
    ]
    for name, s in fp["intensity"].items():
        lines.append(
            f"{name} on the foreground: mean {s['mean']:.2f}, sd {s['std']:.2f}, "
            f"0.5-99.5 % [{s['p00_5']:.2f}, {s['p99_5']:.2f}]; background mean {s['background_mean']:.2f}"
        )
    return "\n".join(lines)


def describe_plan(plan: Mapping[str, Any]) -> str:
    """The plan and its reasons in plain words: what one patch sees, and why this grid."""
    fg = [f"{f:.0%}" for f in plan["foreground_fraction"]]
    return "\n".join(
        [
            f"grid: {_xyz(plan['target_spacing'], '{:.2f}')} mm ({plan['reason']})",
            f"patch: {_xyz(plan['patch_size'])} voxels, batch {plan['batch_size']}; one patch covers "
            f"{_xyz(plan['patch_mm'])} mm = {_pct(plan['case_fraction'])} of the median case's volume "
            f"and {' x '.join(fg)} of its foreground's extent",
            f"at the native {_xyz(plan['native_spacing'], '{:.2f}')} mm it would cover "
            f"{_xyz(plan['native_patch_mm'])} mm = {_pct(plan['native_case_fraction'])} of the case",
            f"bottleneck: {_xyz(plan['patch_size'])} halved {DOWNSAMPLINGS} times "
            f"= {_xyz(plan['bottleneck'])} voxel(s)",
        ]
    )
