"""Geometry: put label maps on their image's grid, reorient, resample, and invert it all.

Arrays are ``[z, y, x]`` and affines map ``(x, y, z, 1)`` to world RAS+ mm, as in
:mod:`helpers.io`. Reorientation uses nibabel's orientation tools on the (x, y, z)
view of the array; resampling uses ``scipy.ndimage.zoom`` in grid mode, where the
voxel grid's outer edges stay fixed, so resampling to a spacing and back to the
native shape returns exactly the native grid and affine.

Interpolation: images are linear (order 1). Label maps are resampled per class,
linearly, then argmaxed (as nnU-Net does): nearest neighbour shifts thin
structures by up to half a voxel at each step, and a round trip through a coarser
grid loses more of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage as ndi

from helpers.checks import check_affine, check_image
from helpers.io import load_volume
from helpers.volume import Volume, VolumeError

Spacing = tuple[float, float, float]


def describe_grid(volume: Volume) -> str:
    """ "shape (Z, Y, X), spacing (dz, dy, dx) mm, orientation RAS" for error messages."""
    codes = "".join(nib.aff2axcodes(volume.affine))
    spacing = ", ".join(f"{s:.3g}" for s in volume.spacing)
    return f"shape {volume.shape[:3]}, spacing ({spacing}) mm, orientation {codes}"


def voxel_to_voxel(source_affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """4x4 matrix taking (x, y, z, 1) voxel indices of ``target`` to those of ``source``."""
    return np.linalg.inv(source_affine) @ target_affine


def align_to(image: Volume, labels: Volume, atol: float = 1e-3) -> np.ndarray:
    """``labels.array`` reoriented onto ``image``'s voxel grid, (Z, Y, X).

    The label map must describe the same grid in world space, possibly stored with
    its axes flipped or permuted (one converter writes LAS, another LPS). Its
    voxel-to-voxel map onto the image must then be a signed permutation with whole-
    voxel offsets; anything else is a different grid and is refused, never resampled.

    Raises
    ------
    VolumeError
        Naming both files, with both shapes, spacings and orientation codes.
    """
    m = voxel_to_voxel(labels.affine, image.affine)
    rot, shift = m[:3, :3], m[:3, 3]
    perm = np.round(rot)
    shape_xyz = np.array(image.shape[:3][::-1])
    ok = np.allclose(rot, perm, atol=atol) and np.allclose(shift, np.round(shift), atol=atol)
    ok = ok and np.all(np.abs(perm).sum(axis=0) == 1) and np.all(np.abs(perm).sum(axis=1) == 1)
    if ok:
        corners = np.array([[0, 0, 0], shape_xyz - 1]).T
        mapped = perm @ corners + np.round(shift)[:, None]
        label_xyz = np.array(labels.shape[:3][::-1])
        ok = bool(np.all(mapped >= 0) and np.all(mapped.max(axis=1) < label_xyz))
        ok = ok and np.array_equal(np.sort(np.abs(perm) @ label_xyz), np.sort(shape_xyz))
    if not ok:
        raise VolumeError(
            labels.path,
            f"label map is on a different grid from its image {image.path}: labels {describe_grid(labels)}; "
            f"image {describe_grid(image)}. Labels are never resampled silently: "
            "export them on the image's grid",
        )
    # (x, y, z) image index -> label index along each axis: label axis j = sign * image axis i + offset
    data = labels.array[..., 0] if labels.array.ndim == 4 else labels.array
    xyz = np.transpose(data, (2, 1, 0))
    src_axis = [int(np.argmax(np.abs(perm[j]))) for j in range(3)]  # label axis j comes from image axis
    order = [src_axis.index(i) for i in range(3)]  # for image axis i, the label axis
    out = np.transpose(xyz, order)
    for i in range(3):
        j = order[i]
        if perm[j, i] < 0:
            out = np.flip(out, axis=i)
    return np.ascontiguousarray(np.transpose(out, (2, 1, 0)))


def reorient(volume: Volume, codes: str = "RAS") -> tuple[Volume, np.ndarray]:
    """``volume`` with its axes flipped and permuted so that x, y, z point to ``codes``.

    Returns ``(reoriented, transform)``; ``transform`` is the nibabel orientation
    array that :func:`undo_reorient` needs to go back.
    """
    current = ornt.io_orientation(volume.affine)
    target = ornt.axcodes2ornt(tuple(codes))
    transform = ornt.ornt_transform(current, target)
    xyz = np.moveaxis(volume.array, (0, 1, 2), (2, 1, 0))
    shape_xyz = xyz.shape[:3]
    out = ornt.apply_orientation(xyz, transform)
    affine = volume.affine @ ornt.inv_ornt_aff(transform, shape_xyz)
    array = np.ascontiguousarray(np.moveaxis(out, (0, 1, 2), (2, 1, 0)))
    return Volume(array, affine, volume.source_format, volume.path, dict(volume.meta)), transform


def ras_spacing(affine: np.ndarray) -> Spacing:
    """Voxel size (Z, Y, X) in mm that :func:`reorient` to RAS gives, from the affine alone."""
    order = ornt.io_orientation(affine)[:, 0].astype(int)  # stored axis i becomes RAS axis order[i]
    sizes_xyz = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    ras = np.empty(3)
    ras[order] = sizes_xyz
    return float(ras[2]), float(ras[1]), float(ras[0])


def undo_reorient(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Inverse of :func:`reorient` for an array on the reoriented grid (Z, Y, X[, C])."""
    xyz = np.moveaxis(array, (0, 1, 2), (2, 1, 0))
    back = ornt.apply_orientation(xyz, _invert_ornt(transform))
    return np.ascontiguousarray(np.moveaxis(back, (0, 1, 2), (2, 1, 0)))


def _invert_ornt(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``transform`` (whose row i sends axis i to axis k)."""
    inverse = np.zeros_like(transform)
    for i, (k, flip) in enumerate(transform):
        inverse[int(k)] = [i, flip]
    return inverse


def check_spacing(spacing: Sequence[float], name: str = "target_spacing") -> Spacing:
    """Return ``spacing`` as 3 positive finite floats (Z, Y, X) in mm, or raise VolumeError."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise VolumeError(name, f"must be 3 numbers (Z, Y, X) in mm, got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise VolumeError(name, f"must be 3 numbers > 0 (Z, Y, X) in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """Shape (Z, Y, X) of a grid covering the same extent at ``target`` spacing (at least 1 voxel)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape[:3], spacing, target, strict=True))


def grid_affine(affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Affine of a grid with ``new_shape`` voxels spanning the same box as ``shape`` (grid mode)."""
    scale_xyz = np.array([s / n for s, n in zip(shape[:3][::-1], new_shape[:3][::-1], strict=True)])
    step = np.eye(4)
    step[:3, :3] = np.diag(scale_xyz)
    step[:3, 3] = (scale_xyz - 1) / 2  # voxel centres move with the voxel size; the edges stay
    return check_affine(affine) @ step


#: Target Z slices that :func:`resize` computes at a time: beyond its result, its working
#: memory is a few slabs (a 32-slice slab of 512 x 512 float32 is 32 MB), not whole volumes.
RESIZE_SLAB = 32


def resize(
    array: np.ndarray,
    shape: Sequence[int],
    labels: bool = False,
    n_classes: int | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Resample ``array`` (Z, Y, X[, C]) to the spatial ``shape`` over the same box.

    Images: linear interpolation (the values of ``ndi.zoom(..., order=1, mode="nearest",
    grid_mode=True)``), in ``dtype`` (float32; float16 halves a probability map).
    ``labels=True``: each class's indicator is interpolated linearly and the argmax taken,
    uint8 (classes 0..n_classes-1). Either way the result is computed
    :data:`RESIZE_SLAB` target slices at a time, one channel at a time, straight into the
    preallocated result: the working memory beyond it is a few slabs, whatever the
    volume's size or number of classes.
    """
    shape = tuple(int(s) for s in shape[:3])
    if tuple(array.shape[:3]) == shape:
        return array.astype(dtype) if not labels else array.astype(np.uint8)
    if labels:
        n = int(n_classes if n_classes is not None else int(array.max()) + 1)
        return _resize_labels(np.asarray(array), shape, n)
    out = np.empty((*shape, *array.shape[3:]), dtype)
    for c in range(array.shape[3] if array.ndim == 4 else 1):
        channel = array[..., c] if array.ndim == 4 else array
        target = out[..., c] if array.ndim == 4 else out
        for z0 in range(0, shape[0], RESIZE_SLAB):
            slab = (slice(z0, min(z0 + RESIZE_SLAB, shape[0])), slice(0, shape[1]), slice(0, shape[2]))
            target[slab[0]] = _zoom_region(channel, slab, lambda block: np.asarray(block, np.float32), shape)
    return out


def _zoom_region(
    array: np.ndarray, target: Sequence[slice], indicator: Any, shape: Sequence[int] | None = None
) -> np.ndarray:
    """Linear grid-mode interpolation of ``indicator(array[window])`` over the ``target`` region
    (3 slices of the resampled grid, ``shape``, default the slices' stops): float32, the values
    ``ndi.zoom`` gives there, reading only the source voxels that region needs."""
    full = tuple(int(s.stop) for s in target) if shape is None else tuple(shape)
    ratio = np.array(array.shape[:3], float) / np.array(full, float)  # source voxels per target voxel
    source, offset = [], []
    for t, r, n_source in zip(target, ratio, array.shape[:3], strict=True):
        s0 = max(0, int(np.floor((t.start + 0.5) * r - 0.5)))
        s1 = min(n_source, int(np.floor((t.stop - 0.5) * r - 0.5)) + 2)
        source.append(slice(s0, s1))
        offset.append((t.start + 0.5) * r - 0.5 - s0)
    block = indicator(array[tuple(source)])
    reach = [t.stop - t.start for t in target]
    return ndi.affine_transform(block, ratio, offset, output_shape=reach, order=1, mode="nearest")


def _reach(box: Sequence[slice], ratio: np.ndarray, shape: Sequence[int]) -> list[slice]:
    """The target voxels whose interpolation a source ``box`` can touch."""
    return [
        slice(
            max(0, int(np.floor((sl.start - 0.5) / r - 0.5))),
            min(n, int(np.ceil((sl.stop + 0.5) / r - 0.5)) + 1),
        )
        for sl, r, n in zip(box, ratio, shape, strict=True)
    ]


def _resize_labels(array: np.ndarray, shape: tuple[int, int, int], n: int) -> np.ndarray:
    """Per-class linear interpolation of the class indicators, then the argmax (ties to the
    lower class), :data:`RESIZE_SLAB` target slices at a time. In each slab the background is
    interpolated over the whole slab, every other class only where its bounding box
    (``ndi.find_objects``, one pass for all classes) can reach: the cost is one whole-volume
    pass plus the classes' boxes, not one pass per class, and the memory beyond the result is
    a few slabs, with the values of a whole-volume ``ndi.zoom`` per class.
    """
    ratio = np.array(array.shape[:3], float) / np.array(shape, float)
    boxes = ndi.find_objects(array, max_label=n - 1) if n > 1 else []
    reaches = [(c, _reach(box, ratio, shape)) for c, box in enumerate(boxes, start=1) if box is not None]
    out = np.empty(shape, np.uint8)
    for z0 in range(0, shape[0], RESIZE_SLAB):
        z1 = min(z0 + RESIZE_SLAB, shape[0])
        slab = (slice(z0, z1), slice(0, shape[1]), slice(0, shape[2]))
        best = _zoom_region(array, slab, lambda block: (block == 0).astype(np.float32), shape)
        labels = np.zeros(best.shape, np.uint8)
        for c, reach in reaches:
            zs = slice(max(reach[0].start, z0), min(reach[0].stop, z1))
            if zs.start >= zs.stop:
                continue
            region = (zs, reach[1], reach[2])
            score = _zoom_region(array, region, lambda block, c=c: (block == c).astype(np.float32), shape)
            local = (slice(zs.start - z0, zs.stop - z0), reach[1], reach[2])
            better = score > best[local]
            labels[local][better], best[local][better] = c, score[better]
        out[z0:z1] = labels
    return out


@dataclass
class Resampling:
    """How one scan was brought to the working grid, and how to go back.

    ``native_shape`` and ``native_affine`` describe the scan as stored; ``transform``
    reorients it to RAS, giving ``oriented_shape``; ``shape`` and ``affine`` are the
    working grid at the target spacing.
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    transform: np.ndarray
    oriented_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    affine: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready lists (:meth:`from_json` reads it back)."""
        return {
            "native_shape": list(self.native_shape),
            "native_affine": self.native_affine.tolist(),
            "transform": np.asarray(self.transform).tolist(),
            "oriented_shape": list(self.oriented_shape),
            "shape": list(self.shape),
            "affine": self.affine.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resampling:
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("native_affine", "transform", "affine")}
        shapes = {k: tuple(int(n) for n in data[k]) for k in ("native_shape", "oriented_shape", "shape")}
        return cls(**shapes, **arrays)  # type: ignore[arg-type]

    def invert(
        self, array: np.ndarray, labels: bool = True, n_classes: int | None = None, dtype: Any = np.float32
    ) -> np.ndarray:
        """Bring an array on the working grid back to the native grid (shape and orientation).

        ``labels=True`` for a label map (per-class linear, then argmax); False for
        probabilities or intensities (linear per channel, into ``dtype``). The result lies
        on ``native_shape`` with ``native_affine``.
        """
        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array shape {array.shape[:3]} is not the working grid {self.shape}")
        back = resize(array, self.oriented_shape, labels=labels, n_classes=n_classes, dtype=dtype)
        return undo_reorient(back, self.transform)


def to_working_grid(
    volume: Volume, target_spacing: Sequence[float] | None, labels: bool = False, n_classes: int | None = None
) -> tuple[Volume, Resampling]:
    """Reorient ``volume`` to RAS and resample it to ``target_spacing`` (Z, Y, X mm; None keeps it).

    Returns the volume on the working grid and the :class:`Resampling` that inverts it.
    """
    native_shape = tuple(int(s) for s in volume.shape[:3])
    oriented, transform = reorient(volume)
    target = oriented.spacing if target_spacing is None else check_spacing(target_spacing)
    shape = resampled_shape(oriented.shape, oriented.spacing, target)
    array = resize(oriented.array, shape, labels=labels, n_classes=n_classes)
    affine = grid_affine(oriented.affine, oriented.shape, shape)
    out = Volume(array, affine, volume.source_format, volume.path, dict(volume.meta))
    record = Resampling(native_shape, volume.affine.copy(), transform, oriented.shape[:3], shape, affine)  # type: ignore[arg-type]
    return out, record


def load_pair(
    image_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    n_classes: int | None = None,
) -> tuple[Volume, np.ndarray]:
    """Load an image and its label map, with the labels put on the image's voxel grid.

    A label map stored in another orientation of the same grid is reoriented
    (:func:`align_to`); one on a different grid raises :class:`helpers.io.VolumeError`
    naming both files. Returns ``(image_volume, labels)`` with ``labels`` (Z, Y, X)
    uint8 (or a wider integer type above 255 classes).
    """
    from helpers.label_maps import read_label_map

    image = load_volume(image_path)
    check_image(image.array, image_path)
    return image, read_label_map(labels_path, image, n_classes=n_classes).classes
