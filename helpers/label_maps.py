"""Label maps as they come: the one reader every path that opens a label file goes through.

Real exports store labels in many ways: uint8, int16, and often float32 (0.0, 1.0, ...).
:func:`read_label_map` accepts any of them whose values are whole numbers, puts the map
on its image's grid and turns the stored ids into class indices (:func:`remap_to_classes`).
What cannot be a label is refused with the file, the value and the voxel where it sits:
NaN or Inf, a fraction (2.5), a negative id, or an id that ``dataset.json`` does not declare.

Preprocessing (:func:`helpers.datasets.open_dataset`), scoring at native resolution
(:func:`helpers.evaluation.native_labels`) and :func:`helpers.geometry.load_pair` all call it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from helpers.io import load_volume

#: Z slices read at a time, so a memory-mapped map is never loaded whole for the checks.
from helpers.memory import release_pages
from helpers.volume import Volume, VolumeError

_SLABS = 16


class LabelMap(NamedTuple):
    """A label map on its image's grid: ``classes`` (Z, Y, X) uint8 class indices, and
    ``ids``, the sorted stored ids it holds."""

    classes: np.ndarray
    ids: list[int]


def remap_to_classes(stored: np.ndarray, label_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Map stored label ids (integers) to class indices: class ``k`` holds the ids ``label_ids[k]``.

    Ids that no class lists become class 0; :func:`read_label_map` refuses them first
    when it is given the declared ids.

    Example
    -------
    >>> remap_to_classes(np.array([0, 3, 4, 1]), [[0], [1], [3, 4]]).tolist()
    [0, 2, 2, 1]
    """
    top = max(int(stored.max()), max(max(g) for g in label_ids)) + 1
    lut = np.zeros(top, dtype=np.uint8)
    for cls, group in enumerate(label_ids):
        lut[list(group)] = cls
    return lut[stored]


def _first(mask: np.ndarray, z0: int) -> tuple[int, ...]:
    where = np.argwhere(mask)[0]
    return (int(where[0]) + z0, *(int(i) for i in where[1:]))


def check_label_values(
    array: Any,
    path: Any = "labels",
    *,
    declared: Sequence[int] | None = None,
    declared_by: str = "dataset.json",
) -> tuple[np.ndarray, list[int]]:
    """Stored label values as integers, with the ids found, or a :class:`~helpers.io.VolumeError`.

    Parameters
    ----------
    array : array, shape (Z, Y, X), any integer, bool or float dtype
        A label map as stored; a float map must hold whole numbers (``2.0``, not ``2.5``).
    path : str or path
        Named in every error.
    declared : sequence of int, optional
        The ids ``dataset.json`` declares; any other id is refused.
    declared_by : str
        Who declares them, for the message.

    Returns
    -------
    labels : ndarray, shape (Z, Y, X), uint8 (int32 above 255)
    ids : list of int, the sorted ids present

    Example
    -------
    >>> check_label_values(np.array([[[0.0, 2.0]]], np.float32))[1]
    [0, 2]
    """
    if not (hasattr(array, "shape") and hasattr(array, "dtype")):
        array = np.asarray(array)
    if array.ndim != 3 or 0 in array.shape:
        raise VolumeError(
            path, f"a label map must be a non-empty 3-D (Z, Y, X) array, not shape {array.shape}"
        )
    kind = np.dtype(array.dtype).kind
    if kind not in "biuf":
        raise VolumeError(path, f"a label map must hold whole numbers, got dtype {array.dtype}")
    allowed = None if declared is None else np.array(sorted({int(i) for i in declared}))
    found: set[int] = set()
    for z0 in range(0, array.shape[0], _SLABS):
        chunk = np.asarray(array[z0 : z0 + _SLABS])
        if kind == "f":
            bad = ~np.isfinite(chunk)
            if bad.any():
                raise VolumeError(path, f"holds NaN or Inf at voxel (z, y, x) = {_first(bad, z0)}")
            bad = chunk != np.round(chunk)
            if bad.any():
                where = _first(bad, z0)
                value = float(chunk[(where[0] - z0, *where[1:])])
                raise VolumeError(
                    path,
                    f"holds the non-integer label value {value:g} at voxel (z, y, x) = {where}",
                )
        ids = np.unique(chunk)
        release_pages(array)
        if ids[0] < 0:
            raise VolumeError(
                path, f"holds the negative label id {ids[0]:g} at voxel (z, y, x) = {_first(chunk < 0, z0)}"
            )
        if allowed is not None:
            extra = ids[~np.isin(ids, allowed)]
            if extra.size:
                where = _first(chunk == extra[0], z0)
                hint = (
                    "; add it to 'labels' (a list merges ids into one class)"
                    if declared_by == "dataset.json"
                    else ""
                )
                raise VolumeError(
                    path,
                    f"holds label id {extra[0]:g} at voxel (z, y, x) = {where}, which {declared_by} does not "
                    f"declare (it declares {allowed.tolist()}){hint}",
                )
        found.update(int(i) for i in ids)
    top = max(found)
    dtype = np.uint8 if top < 256 else np.int32
    return np.asarray(array).astype(dtype), sorted(found)


def read_label_map(
    path: str | os.PathLike[str],
    like: Volume,
    *,
    label_ids: Sequence[Sequence[int]] | None = None,
    n_classes: int | None = None,
) -> LabelMap:
    """Read the label map at ``path`` onto the grid of image ``like``, as class indices.

    Parameters
    ----------
    path : str or path
        A label file in any format :func:`~helpers.io.load_volume` reads.
    like : Volume
        The image it labels; a map stored in another orientation of the same grid is
        reoriented (:func:`helpers.geometry.align_to`), one on another grid is refused.
    label_ids : list of lists of int, optional
        The stored ids of each class, as ``dataset.json`` declares them; stored ids are
        checked against them and mapped to class indices. Without it the stored ids are
        the class indices.
    n_classes : int, optional
        Without ``label_ids``: refuse ids >= ``n_classes``.

    Returns
    -------
    LabelMap
        ``classes`` (Z, Y, X) uint8 on ``like``'s grid, and the stored ``ids``.
    """
    from helpers.geometry import align_to

    volume = load_volume(path)
    if volume.array.ndim == 4:
        if volume.array.shape[3] != 1:
            raise VolumeError(path, f"a label map has one channel; this file has {volume.array.shape[3]}")
        volume.array = volume.array[..., 0]
    declared, by = (
        (None, "") if label_ids is None else ([i for group in label_ids for i in group], "dataset.json")
    )
    if declared is None and n_classes is not None:
        declared, by = list(range(n_classes)), f"n_classes={n_classes}"
    volume.array, ids = check_label_values(
        volume.array, path, declared=declared, declared_by=by or "dataset.json"
    )
    stored = align_to(like, volume)
    classes = stored if label_ids is None else remap_to_classes(stored, label_ids)
    return LabelMap(classes, ids)
