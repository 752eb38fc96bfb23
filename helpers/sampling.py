"""On-the-fly patch sampling across cases, with class-balanced foreground oversampling.

Instead of cutting every patch in advance (the tutorial route), :class:`PatchSampler`
draws random patches from one or several volumes at each step, with flips and
90-degree rotations.

- **Which case:** uniformly. The test score is a mean over cases, so each case
  counts the same, whatever its size (nnU-Net samples cases uniformly too).
- **Where:** a share ``foreground_fraction`` of the patches is centred on a voxel of
  a foreground class chosen uniformly among the classes present, then on a case
  holding it, so a rare class (the sandstone's pyrite, under 1 % of voxels) is the
  centre of as many patches as a common one. The rest are placed uniformly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from helpers.case_cache import class_candidates
from helpers.checks import check_image, check_labels
from helpers.memory import release_pages
from helpers.patches import as_patch_shape, pad_to_patch
from helpers.preprocessing import one_hot


def augment_patch(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and a 90-degree rotation, the same for image (Z, Y, X, C) and labels (Z, Y, X)."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    planes = [(a, b) for a, b in ((0, 1), (0, 2), (1, 2)) if labels.shape[a] == labels.shape[b]]
    if planes:
        plane = planes[rng.integers(len(planes))]
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k, plane), np.rot90(labels, k, plane)
    return image, labels


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _cases(value: Any, name: str) -> list[Any]:
    """``value`` as a list of per-case arrays: one array, or a list or tuple of arrays.

    A nested Python list of numbers is refused rather than read as one case per
    element.
    """
    if not isinstance(value, (list, tuple)):
        return [value]
    if any(not hasattr(v, "shape") for v in value):
        raise ValueError(
            f"{name} is a nested Python list of numbers, not a list of arrays: pass np.asarray({name}) "
            "for one case, or a list with one array per case"
        )
    return list(value)


class PatchSampler(keras.utils.PyDataset):
    """Random training patches drawn on the fly from images and their label maps.

    Parameters
    ----------
    image : ndarray or memmap (Z, Y, X) or (Z, Y, X, C), or a list of them (one per case)
        Intensities, already normalised; converted to float32 patch by patch.
    labels : ndarray or memmap (Z, Y, X) of class indices, or a list matching ``image``
    patch_size : int or 3 ints
        Patch shape in voxels, (Z, Y, X). Cases shorter than it along an axis are
        zero-padded (with a warning naming the case).
    batch_size, steps_per_epoch : int
        Patches per batch; batches per epoch (``len(sampler)``).
    foreground_fraction : float
        Share of patches centred on a voxel of a foreground class, the class chosen
        uniformly among those present (see the module docstring). Use 0 for an
        unbiased validation sample.
    augment : bool
        Random flips on each axis and 90-degree rotations in the planes whose
        two sides are equal, applied identically to image and labels.
    seed : int
        Batches depend only on (seed, epoch, index): reproducible, also with workers.
    n_classes : int, optional
        Width of the one-hot labels (default: the largest label + 1); 1 gives a
        single 0/1 channel for a sigmoid model. Labels are checked against it.
    background : int
        The class never used as a foreground centre.
    resample_each_epoch : bool
        False gives the same batches every epoch (use it for validation).
    names : list of str, optional
        Case names, for messages.
    candidates : list of dict, optional
        Per case, {class: flat indices (int64) of voxels of that class}, as a dataset's
        cache keeps them (:attr:`helpers.datasets.Case.candidates`); saves reading
        every label map to find them. Indices are into the case's own shape, unpadded.
    **kwargs
        ``workers``, ``use_multiprocessing``, ``max_queue_size`` for Keras.

    Each item is ``(x, y)``: x float32 (B, pz, py, px, C), y float32 one-hot
    (B, pz, py, px, n_classes).
    """

    def __init__(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | Sequence[np.ndarray],
        patch_size: int | Sequence[int],
        batch_size: int,
        steps_per_epoch: int,
        foreground_fraction: float = 0.33,
        augment: bool = True,
        seed: int = 0,
        n_classes: int | None = None,
        background: int = 0,
        resample_each_epoch: bool = True,
        names: Sequence[str] | None = None,
        candidates: Sequence[dict[int, np.ndarray] | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        images, label_maps = _cases(image, "image"), _cases(labels, "labels")
        if not images or len(images) != len(label_maps):
            raise ValueError(
                f"image and labels must be lists of equal length, got {len(images)} and {len(label_maps)}"
            )
        names = [str(n) for n in names] if names is not None else [f"case {i}" for i in range(len(images))]
        self.batch_size = _check_count("batch_size", batch_size)
        self.steps = _check_count("steps_per_epoch", steps_per_epoch)
        if n_classes is not None:
            n_classes = _check_count("n_classes", n_classes)
        if not isinstance(foreground_fraction, (int, float)) or not 0 <= foreground_fraction <= 1:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction!r}")
        self.patch = as_patch_shape(patch_size)
        self.images, self.labels, self.extents = [], [], []  # extents: the shapes, zero-padded to a patch
        given = list(candidates) if candidates is not None else [None] * len(images)
        if len(given) != len(images):
            raise ValueError(f"candidates must have one entry per case ({len(images)}), got {len(given)}")
        for name, img, lab in zip(names, images, label_maps, strict=True):
            where = "image" if len(images) == 1 else f"image of {name}"
            img = check_image(img, where)
            if getattr(lab, "shape", None) != img.shape[:3]:
                raise ValueError(
                    f"labels shape {getattr(lab, 'shape', None)} differs from image shape {img.shape[:3]}"
                    + ("" if len(images) == 1 else f" in {name}")
                )
            lab = check_labels(lab, None if n_classes in (None, 1) else n_classes, "labels", convert=False)
            short = [a for a, (s, p) in enumerate(zip(img.shape[:3], self.patch, strict=True)) if s < p]
            if short:
                warnings.warn(
                    f"{name}: shape {img.shape[:3]} is smaller than the patch {self.patch} along axes "
                    f"{short} (Z=0, Y=1, X=2); it is zero-padded",
                    stacklevel=2,
                )
            self.images.append(img)
            self.labels.append(lab)
            self.extents.append(tuple(max(s, p) for s, p in zip(img.shape[:3], self.patch, strict=True)))
        self.names = names
        channels = {1 if i.ndim == 3 else i.shape[3] for i in self.images}
        if len(channels) != 1:
            raise ValueError(f"all images must have the same number of channels, got {sorted(channels)}")
        self.channels = channels.pop()
        self.n_classes = n_classes or max(int(np.asarray(lab).max()) for lab in self.labels) + 1
        self.foreground_fraction, self.augment = float(foreground_fraction), augment
        self.seed, self.epoch, self.resample = int(seed), 0, resample_each_epoch
        foreground = [c for c in range(max(self.n_classes, 2)) if c != background]
        self.candidates = [
            {c: v for c, v in cand.items() if c in foreground}
            if cand is not None
            else class_candidates(lab, foreground, seed=self.seed + k)
            for k, (cand, lab) in enumerate(zip(given, self.labels, strict=True))
        ]
        self.classes = sorted({c for cand in self.candidates for c in cand})
        self.cases_with = {
            c: [k for k, cand in enumerate(self.candidates) if c in cand] for c in self.classes
        }

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        if self.resample:
            self.epoch += 1

    def _start(self, rng: np.random.Generator) -> tuple[int, tuple[int, int, int]]:
        """(case index, patch start) for one patch."""
        if self.classes and rng.random() < self.foreground_fraction:
            cls = self.classes[rng.integers(len(self.classes))]
            holders = self.cases_with[cls]
            k = holders[rng.integers(len(holders))]
            cand = self.candidates[k][cls]
            centre = np.unravel_index(cand[rng.integers(len(cand))], self.labels[k].shape)
            extent = self.extents[k]
            start = tuple(
                int(min(max(c - p // 2, 0), s - p))
                for c, p, s in zip(centre, self.patch, extent, strict=True)
            )
            return k, start  # type: ignore[return-value]
        k = int(rng.integers(len(self.labels)))
        shape = self.extents[k]
        return k, tuple(int(rng.integers(0, s - p + 1)) for p, s in zip(self.patch, shape, strict=True))  # type: ignore[return-value]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch as (x, labels) before one-hot encoding.

        Labels are uint8, or int32 when ``n_classes`` exceeds 256.
        """
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        x = np.empty((self.batch_size, *self.patch, self.channels), dtype=np.float32)
        y = np.empty((self.batch_size, *self.patch), dtype=np.uint8 if self.n_classes <= 256 else np.int32)
        for b in range(self.batch_size):
            k, (z0, y0, x0) = self._start(rng)
            win = (
                slice(z0, z0 + self.patch[0]),
                slice(y0, y0 + self.patch[1]),
                slice(x0, x0 + self.patch[2]),
            )
            img = np.array(self.images[k][win], dtype=np.float32)  # copies: no view into a memory map
            lab = np.array(self.labels[k][win])
            release_pages(self.images[k])  # so its pages leave the process with each patch
            release_pages(self.labels[k])
            if img.ndim == 3:
                img = img[..., None]
            if lab.shape != self.patch:  # a case shorter than the patch: zero-padded at the far end
                img, lab = (
                    pad_to_patch(img, self.patch)[0],
                    pad_to_patch(lab[..., None], self.patch)[0][..., 0],
                )
            if self.augment:
                img, lab = augment_patch(img, lab, rng)
            x[b], y[b] = img, lab
        return x, y

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.sample(index)
        if self.n_classes == 1:
            return x, (y > 0).astype(np.float32)[..., None]
        return x, one_hot(y, self.n_classes)
