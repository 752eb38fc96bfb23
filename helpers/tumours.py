"""A generated two-channel MR dataset that behaves like a real brain-tumour export.

:func:`make_tumour_dataset` writes the folder a student gets from a public challenge
after converting it for nnU-Net v2, with everything that makes real data awkward:

- two channels per case, ``FLAIR`` and ``T1c``, as ``<case>_0000.nii.gz`` and
  ``<case>_0001.nii.gz``; case ids that end in digits (``TUM_0003``), so only the
  channel suffix tells a channel from an id;
- label maps stored as **float32** (0.0 ... 3.0), as many converters write them;
- images already **z-scored** per channel, so the air around the head is not 0;
- a ``dataset.json`` with nnU-Net v2's four required keys and nothing else (no ``name``:
  it comes from the folder, ``Dataset042_Tumour`` -> ``Tumour``);
- tumours of different size, shape and place in every case, an intensity bias field and
  noise, so train, validation and test cases differ as patients do.

Each case is a head-sized ellipsoid (about 150 x 180 x 150 mm, Z, Y, X) whatever the grid:
``shape`` and ``spacing`` choose the resolution (the course's tests use 4 mm, a real scan 1 mm).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

#: Class name -> stored id, in nnU-Net v2's form.
TUMOUR_LABELS = {"background": 0, "oedema": 1, "enhancing": 2, "necrosis": 3}
TUMOUR_CHANNELS = {"0": "FLAIR", "1": "T1c"}
#: Mean intensity of brain, oedema, enhancing rim and necrosis in each channel, before z-scoring.
_LEVELS = {"FLAIR": (1.0, 2.2, 1.8, 1.4), "T1c": (1.0, 0.8, 2.4, 0.4)}


def _smooth_noise(shape: Sequence[int], rng: np.random.Generator, coarse: int = 6) -> np.ndarray:
    """A smooth random field in [-1, 1] of ``shape``: coarse noise, zoomed up (cheap at any size)."""
    field = rng.standard_normal((coarse,) * 3)
    field = ndi.zoom(field, [s / coarse for s in shape], order=3, mode="nearest")[
        tuple(slice(0, s) for s in shape)
    ]
    return field / max(float(np.abs(field).max()), 1e-6)


def make_tumour_case(
    shape: Sequence[int], spacing: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One case: image (Z, Y, X, 2) float32, z-scored per channel, and labels (Z, Y, X) float32.

    ``spacing`` is the isotropic voxel size in mm; the head and the tumour have the same
    size in mm at every spacing.
    """
    shape = tuple(int(s) for s in shape)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    centre = [s / 2 for s in shape]
    head = sum(((g - c) * spacing / r) ** 2 for g, c, r in zip(grid, centre, (75.0, 90.0, 75.0), strict=True))
    brain = head <= 0.85 * (1 + 0.05 * _smooth_noise(shape, rng))
    # the tumour: a deformed ball of oedema around an enhancing rim around necrosis
    inside = np.argwhere(head < 0.35)
    where = inside[rng.integers(len(inside))]
    radius = rng.uniform(25.0, 45.0)  # mm: oedema spans about 50-90 mm, as gliomas do
    dist = np.sqrt(sum(((g - c) * spacing) ** 2 for g, c in zip(grid, where, strict=True)))
    dist = dist / (radius * (1 + 0.3 * _smooth_noise(shape, rng, coarse=5)))
    labels = np.zeros(shape, np.float32)
    labels[(dist < 1.0) & brain] = 1
    labels[(dist < rng.uniform(0.5, 0.65)) & brain] = 2
    labels[(dist < rng.uniform(0.25, 0.4)) & brain] = 3
    bias = 1 + 0.15 * _smooth_noise(shape, rng, coarse=3)
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0)
    channels = []
    for name in TUMOUR_CHANNELS.values():
        levels = np.array([0.0, *_LEVELS[name]], np.float32)  # air, then brain and the three classes
        tissue = np.where(brain, 1 + labels, 0).astype(np.intp)
        raw = levels[tissue]
        raw[(head <= 1.0) & ~brain] = 0.6 if name == "T1c" else 0.3  # scalp and skull
        raw = raw * bias * (1 + 0.15 * texture)  # classes overlap in each channel, as in MR
        raw += 0.2 * rng.standard_normal(shape).astype(np.float32)
        channels.append(((raw - raw.mean()) / raw.std()).astype(np.float32))
    return np.stack(channels, axis=-1), labels


def make_tumour_dataset(
    folder: str | os.PathLike[str],
    *,
    cases: int = 6,
    unlabelled: int = 2,
    shape: Sequence[int] = (38, 45, 38),
    spacing: float = 4.0,
    seed: int = 0,
) -> Path:
    """Write the generated tumour dataset into ``folder`` in nnU-Net v2's layout; returns ``folder``.

    Parameters
    ----------
    folder : path
        Created if missing. Name it as nnU-Net does (``Dataset042_Tumour``): the
        ``dataset.json`` has no ``name``.
    cases, unlabelled : int
        Labelled cases in ``imagesTr/``/``labelsTr/``; scans without labels in ``imagesTs/``.
    shape : 3 ints
        Voxels (Z, Y, X) of every case.
    spacing : float
        Isotropic voxel size in mm. ``shape=(155, 240, 240), spacing=1.0`` is a real
        scan's size; the default, 4 mm, makes a case of 65,000 voxels for tests.
    seed : int
        Every case differs, reproducibly.

    Example
    -------
    >>> import tempfile  # doctest: +SKIP
    >>> root = make_tumour_dataset(Path(tempfile.mkdtemp()) / "Dataset042_Tumour")  # doctest: +SKIP
    >>> sorted(p.name for p in (root / "imagesTr").iterdir())[:2]  # doctest: +SKIP
    ['TUM_0000_0000.nii.gz', 'TUM_0000_0001.nii.gz']
    """
    import nibabel as nib

    root = Path(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-s * spacing / 2 for s in tuple(shape)[::-1]]
    rng = np.random.default_rng(seed)
    for k in range(cases + unlabelled):
        image, labels = make_tumour_case(shape, spacing, rng)
        case, sub = (f"TUM_{k:04d}", "imagesTr") if k < cases else (f"NEW_{k - cases:04d}", "imagesTs")
        for c in range(image.shape[-1]):  # NIfTI stores (x, y, z): our arrays are (z, y, x)
            data = np.ascontiguousarray(image[..., c].transpose(2, 1, 0))
            nib.save(nib.Nifti1Image(data, affine), root / sub / f"{case}_{c:04d}.nii.gz")
        if k < cases:
            nib.save(
                nib.Nifti1Image(labels.transpose(2, 1, 0).copy(), affine),
                root / "labelsTr" / f"{case}.nii.gz",
            )
    spec = {
        "channel_names": TUMOUR_CHANNELS,
        "labels": TUMOUR_LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(spec, indent=1) + "\n")
    return root
