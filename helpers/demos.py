"""The embedded demos as datasets of several cases, made reproducibly: rock cores and brain subjects.

A real dataset holds several scans that differ: samples of one rock whose grain size
and mineral content vary from core to core; subjects whose anatomy, scanner bias,
contrast and noise differ. Split by case, the test part then measures what a model does
on a scan it has never seen, not on a neighbouring slab of its training volume.

- :func:`make_sandstone_cores`: cores of :func:`helpers.datasets.make_sandstone`, each
  with its own quartz, clay and pyrite content, grain size and noise.
- :func:`make_brain_subjects`: subjects made from the MNI152 template by a smooth random
  deformation (its tissue maps deformed with it), a bias field, a contrast change and noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

#: Cases of each embedded demo: 3 for training, 1 for validation and 1 for test at the
#: profiles' split (60 / 20 / 20 % and 75 / 12.5 / 12.5 %).
N_DEMO_CASES = 5


class DemoCase(NamedTuple):
    """One generated case: image float32 (Z, Y, X), labels uint8 (Z, Y, X), how it was made."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    recipe: dict[str, float]


def _smooth(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field, zero mean and unit standard deviation, float32."""
    f = ndi.gaussian_filter(rng.standard_normal(tuple(shape), dtype=np.float32), sigma, mode="nearest")
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def make_sandstone_cores(shape: Sequence[int], n: int = N_DEMO_CASES, *, seed: int = 0) -> list[DemoCase]:
    """``n`` sandstone cores of ``shape`` (Z, Y, X) whose phase statistics differ from core to core.

    Each core draws, from its own generator (``seed`` and its index), the share of
    quartz (0.42-0.62), how much of the grain surface clay coats (its threshold,
    -0.9-0.5), the density of pyrite seeds (2e-4-1.5e-3 per voxel), the grain size
    (field sigma 3.2-4.8 voxels) and the noise (0.06-0.10), then is made by
    :func:`helpers.datasets.make_sandstone`. Same arguments, same cores.

    Returns
    -------
    list of DemoCase
        ``core1`` ... ``core<n>``; ``recipe`` holds the drawn statistics.

    Example
    -------
    >>> cores = make_sandstone_cores((32, 32, 32), 3)
    >>> [c.name for c in cores], cores[0].image.shape
    (['core1', 'core2', 'core3'], (32, 32, 32))
    """
    from helpers.embedded import make_sandstone

    out = []
    for k in range(int(n)):
        rng = np.random.default_rng([seed, k, 17])
        recipe = {
            "quartz_fraction": float(rng.uniform(0.42, 0.62)),
            "clay_threshold": float(rng.uniform(-0.9, 0.5)),
            "pyrite_density": float(np.exp(rng.uniform(np.log(2e-4), np.log(1.5e-3)))),
            "grain_sigma": float(rng.uniform(3.2, 4.8)),
            "noise": float(rng.uniform(0.06, 0.10)),
        }
        image, labels = make_sandstone(shape, seed=seed * 1000 + k + 1, progress=False, **recipe)
        out.append(DemoCase(f"core{k + 1}", image, labels, recipe))
    return out


def _deform(
    arrays: Sequence[np.ndarray], spacing: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
    """``arrays`` (one grid) warped by one smooth random deformation: a global scaling of
    0.92-1.08 per axis about the centre and a displacement field of 3 mm (standard
    deviation, smooth over 12 mm). Linear interpolation; the arrays' edges extend outward."""
    shape = arrays[0].shape
    spacing = np.asarray(spacing, float)
    scale = rng.uniform(0.92, 1.08, 3)
    centre = (np.asarray(shape, float) - 1) / 2
    grid = np.indices(shape, dtype=np.float32)
    coords = []
    for axis in range(3):
        warp = _smooth(shape, 12.0 / spacing[axis], rng) * (3.0 / spacing[axis])
        coords.append(centre[axis] + (grid[axis] - centre[axis]) / scale[axis] + warp)
    return [ndi.map_coordinates(a, coords, order=1, mode="nearest").astype(np.float32) for a in arrays]


def make_brain_subjects(
    zoom: float, n: int = N_DEMO_CASES, *, seed: int = 0
) -> tuple[list[DemoCase], np.ndarray]:
    """``n`` T1 subjects made from the MNI152 template at ``zoom``, each with its tissue labels.

    Each subject, from its own generator: the template and its grey- and white-matter
    probability maps warped by one smooth random deformation (scaling 0.92-1.08 per axis,
    3 mm displacements), labelled by :func:`helpers.datasets.load_brain_mri`'s rule; then
    a multiplicative bias field (about 10 % across the head), a contrast change (a gamma
    of 0.8-1.25 on the intensities) and Gaussian noise (2-5 % of the brain's brightness).
    Every subject is cropped to the template's brain plus 8 mm, so all share one grid.

    Returns
    -------
    subjects : list of DemoCase
        ``subject1`` ... ``subject<n>``: image float32 and labels uint8 (Z, Y, X).
    affine : float64 (4, 4)
        The cropped grid's affine, in mm.
    """
    from helpers.affines import crop_affine
    from helpers.embedded import brain_template

    t1, p_gm, p_wm, affine = brain_template(zoom)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[::-1]  # (Z, Y, X) mm
    brain = np.argwhere((p_gm >= 0.5) | (p_wm >= 0.5))
    margin = np.ceil(8.0 / spacing).astype(int)
    lo = np.maximum(brain.min(axis=0) - margin, 0)
    hi = np.minimum(brain.max(axis=0) + margin + 1, t1.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    bright = float(np.percentile(t1[p_wm >= 0.5], 50))
    subjects = []
    for k in range(int(n)):
        rng = np.random.default_rng([seed, k, 29])
        image, gm, wm = (a[crop] for a in _deform([t1, p_gm, p_wm], spacing, rng))
        labels = np.zeros(image.shape, np.uint8)
        labels[(gm >= 0.5) & (gm >= wm)] = 1
        labels[(wm >= 0.5) & (wm > gm)] = 2
        recipe = {
            "bias": 0.1,
            "gamma": float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
            "noise": float(rng.uniform(0.02, 0.05)),
        }
        bias = np.exp(recipe["bias"] * _smooth(image.shape, 40.0 / spacing.min(), rng))
        image = bright * (np.clip(image, 0, None) / bright) ** recipe["gamma"] * bias
        image += rng.normal(0.0, recipe["noise"] * bright, image.shape).astype(np.float32)
        subjects.append(DemoCase(f"subject{k + 1}", image.astype(np.float32), labels, recipe))
    return subjects, crop_affine(affine, crop)
