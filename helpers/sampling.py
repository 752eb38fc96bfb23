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

from helpers.augmentation import augment_patch, check_augmentation
from helpers.case_cache import class_candidates
from helpers.checks import check_image, check_labels
from helpers.memory import release_pages
from helpers.patches import as_patch_shape, pad_to_patch
from helpers.preprocessing import one_hot


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


def _case_lists(
    image: Any, labels: Any, names: Sequence[str] | None, candidates: Sequence[Any] | None
) -> tuple[list[Any], list[Any], list[str], list[Any]]:
    """Per case: images, label maps, names and candidates (None where not given), of one length."""
    images, label_maps = _cases(image, "image"), _cases(labels, "labels")
    if not images or len(images) != len(label_maps):
        raise ValueError(
            f"image and labels must be lists of equal length, got {len(images)} and {len(label_maps)}"
        )
    names = [str(n) for n in names] if names is not None else [f"case {i}" for i in range(len(images))]
    given = list(candidates) if candidates is not None else [None] * len(images)
    if len(given) != len(images):
        raise ValueError(f"candidates must have one entry per case ({len(images)}), got {len(given)}")
    return images, label_maps, names, given


def _checked_cases(
    names: Sequence[str],
    images: Sequence[Any],
    label_maps: Sequence[Any],
    patch: tuple[int, int, int],
    n_classes: int | None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[int, int, int]]]:
    """Check every case's image and labels; returns them with each case's extent (its shape,
    zero-padded to at least a patch). A case shorter than the patch gets a warning naming it."""
    checked_images, checked_labels, extents = [], [], []
    for name, img, lab in zip(names, images, label_maps, strict=True):
        where = "image" if len(images) == 1 else f"image of {name}"
        img = check_image(img, where)
        if getattr(lab, "shape", None) != img.shape[:3]:
            raise ValueError(
                f"labels shape {getattr(lab, 'shape', None)} differs from image shape {img.shape[:3]}"
                + ("" if len(images) == 1 else f" in {name}")
            )
        lab = check_labels(lab, None if n_classes in (None, 1) else n_classes, "labels", convert=False)
        short = [a for a, (s, p) in enumerate(zip(img.shape[:3], patch, strict=True)) if s < p]
        if short:
            warnings.warn(
                f"{name}: shape {img.shape[:3]} is smaller than the patch {patch} along axes "
                f"{short} (Z=0, Y=1, X=2); it is zero-padded",
                stacklevel=3,  # the caller of PatchSampler(...)
            )
        checked_images.append(img)
        checked_labels.append(lab)
        extents.append(tuple(max(s, p) for s, p in zip(img.shape[:3], patch, strict=True)))
    return checked_images, checked_labels, extents


def _channel_count(images: Sequence[np.ndarray]) -> int:
    """The channels every image has (1 for (Z, Y, X)); ValueError when they differ."""
    channels = {1 if i.ndim == 3 else i.shape[3] for i in images}
    if len(channels) != 1:
        raise ValueError(f"all images must have the same number of channels, got {sorted(channels)}")
    return channels.pop()


def _foreground_candidates(
    given: Sequence[dict[int, np.ndarray] | None],
    labels: Sequence[np.ndarray],
    foreground: list[int],
    seed: int,
) -> list[dict[int, np.ndarray]]:
    """Per case, {foreground class: flat voxel indices}: the ``given`` ones restricted to
    ``foreground``, or found in the label map (:func:`helpers.case_cache.class_candidates`)."""
    return [
        {c: v for c, v in cand.items() if c in foreground}
        if cand is not None
        else class_candidates(lab, foreground, seed=seed + k)
        for k, (cand, lab) in enumerate(zip(given, labels, strict=True))
    ]


def _centred_start(
    centre: Sequence[int], patch: tuple[int, int, int], extent: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The start of a patch centred on ``centre``, moved inside a case of ``extent``."""
    return tuple(  # type: ignore[return-value]
        int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, patch, extent, strict=True)
    )


def cut_patch(
    image: Any, labels: Any, start: Sequence[int], patch: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The patch at ``start`` of one case: image float32 (pz, py, px, C) and labels (pz, py, px).

    Both are copies (never a view into a memory map), and the pages read are released
    afterwards (:func:`helpers.io.release_pages`), so a memory-mapped case never stays
    resident. A case shorter than the patch is zero-padded at the far end.

    Example
    -------
    >>> image, labels = np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.zeros((4, 4, 4), np.uint8)
    >>> img, lab = cut_patch(image, labels, (2, 0, 0), (4, 2, 2))
    >>> img.shape, lab.shape, float(img[0, 0, 0, 0]), float(img[3, 0, 0, 0])
    ((4, 2, 2, 1), (4, 2, 2), 32.0, 0.0)
    """
    win = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
    img = np.array(image[win], dtype=np.float32)  # copies: no view into a memory map
    lab = np.array(labels[win])
    release_pages(image)  # so its pages leave the process with each patch
    release_pages(labels)
    if img.ndim == 3:
        img = img[..., None]
    if lab.shape != patch:  # a case shorter than the patch: zero-padded at the far end
        img, lab = pad_to_patch(img, patch)[0], pad_to_patch(lab[..., None], patch)[0][..., 0]
    return img, lab


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
    augment : bool or str
        ``True`` or ``"flips"``: random flips on each axis and 90-degree rotations in
        the planes whose two sides are equal, applied identically to image and labels;
        ``"full"``: those, then a random zoom and contrast and brightness
        (:func:`helpers.augmentation.augment_patch`); ``False``: none.
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
        augment: bool | str = True,
        seed: int = 0,
        n_classes: int | None = None,
        background: int = 0,
        resample_each_epoch: bool = True,
        names: Sequence[str] | None = None,
        candidates: Sequence[dict[int, np.ndarray] | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        images, label_maps, names, given = _case_lists(image, labels, names, candidates)
        self.batch_size = _check_count("batch_size", batch_size)
        self.steps = _check_count("steps_per_epoch", steps_per_epoch)
        if n_classes is not None:
            n_classes = _check_count("n_classes", n_classes)
        if not isinstance(foreground_fraction, (int, float)) or not 0 <= foreground_fraction <= 1:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction!r}")
        self.patch = as_patch_shape(patch_size)
        self.images, self.labels, self.extents = _checked_cases(
            names, images, label_maps, self.patch, n_classes
        )
        self.names = names
        self.channels = _channel_count(self.images)
        self.n_classes = n_classes or max(int(np.asarray(lab).max()) for lab in self.labels) + 1
        kind = "flips" if augment is True else augment
        self.augment = None if augment is False else check_augmentation(kind, "augment")  # a kind, or None
        self.foreground_fraction = float(foreground_fraction)
        self.seed, self.epoch, self.resample = int(seed), 0, resample_each_epoch
        foreground = [c for c in range(max(self.n_classes, 2)) if c != background]
        self.candidates = _foreground_candidates(given, self.labels, foreground, self.seed)
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
        """(case index, patch start) for one patch: centred on a foreground voxel, or uniform."""
        if self.classes and rng.random() < self.foreground_fraction:
            cls = self.classes[rng.integers(len(self.classes))]
            holders = self.cases_with[cls]
            k = holders[rng.integers(len(holders))]
            cand = self.candidates[k][cls]
            centre = np.unravel_index(cand[rng.integers(len(cand))], self.labels[k].shape)
            return k, _centred_start(centre, self.patch, self.extents[k])
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
            k, start = self._start(rng)
            img, lab = cut_patch(self.images[k], self.labels[k], start, self.patch)
            if self.augment:
                img, lab = augment_patch(img, lab, rng, kind=self.augment)
            x[b], y[b] = img, lab
        return x, y

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.sample(index)
        if self.n_classes == 1:
            return x, (y > 0).astype(np.float32)[..., None]
        return x, one_hot(y, self.n_classes)
