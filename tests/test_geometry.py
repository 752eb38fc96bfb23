"""Issue 9: label maps aligned in world space, reorientation and resampling that invert exactly."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers.geometry import align_to, load_pair, reorient, to_working_grid, undo_reorient
from helpers.io import Volume, VolumeError, save_volume
from helpers.metrics import dice_per_class

ROOT = Path(__file__).resolve().parents[1]


def lps_affine(spacing=(2.0, 0.9, 0.8), origin=(10.0, -20.0, 5.0)):
    dz, dy, dx = spacing
    a = np.diag([-dx, -dy, dz, 1.0])  # x to the right-to-left (L), y front-to-back (P)
    a[:3, 3] = origin
    return a


def restored(volume: Volume, flips=(0,), perm=None) -> Volume:
    """The same voxels stored another way: flipped along array axes, optionally permuted."""
    array, affine = volume.array, volume.affine.copy()
    for axis in flips:  # array axis (z, y, x) -> affine column (x, y, z)
        col = 2 - axis
        n = array.shape[axis]
        affine[:3, 3] += affine[:3, col] * (n - 1)
        affine[:3, col] *= -1
        array = np.flip(array, axis)
    if perm is not None:
        array = np.transpose(array, perm)
        cols = [2 - p for p in perm][::-1]  # new xyz column j is old column cols[j]
        affine[:3, :3] = affine[:3, cols]
    return Volume(np.ascontiguousarray(array), affine, "nifti", path="labels.nii.gz")


@pytest.mark.parametrize(
    ("flips", "perm"), [((1,), None), ((0, 2), None), ((2,), (0, 2, 1)), ((), (1, 0, 2))]
)
def test_labels_stored_another_way_land_on_the_image_voxels(rng, flips, perm):
    image = Volume(rng.random((6, 9, 11)).astype(np.float32), lps_affine(), "nifti", path="image.nii.gz")
    labels = Volume(rng.integers(0, 4, (6, 9, 11)).astype(np.uint8), image.affine, "nifti")
    stored = restored(labels, flips, perm)
    aligned = align_to(image, stored)
    # straight from the affines: world position of every image voxel, looked up in the stored map
    zz, yy, xx = np.indices(image.shape).reshape(3, -1)
    world = image.affine @ np.stack([xx, yy, zz, np.ones_like(xx)])
    ijk = np.round(np.linalg.inv(stored.affine) @ world).astype(int)
    assert np.array_equal(aligned[zz, yy, xx], stored.array[ijk[2], ijk[1], ijk[0]])
    assert np.array_equal(aligned, labels.array)


def test_a_label_map_on_another_grid_is_refused_with_both_descriptions(rng):
    image = Volume(np.zeros((6, 9, 11), np.float32), lps_affine(), "nifti", path="img.nii.gz")
    shifted = lps_affine()
    shifted[:3, 3] += [0.4, 0, 0]  # less than a voxel: a different grid
    for other in (
        Volume(np.zeros((6, 9, 11), np.uint8), shifted, "nifti", path="lab.nii.gz"),
        Volume(np.zeros((6, 9, 12), np.uint8), lps_affine(), "nifti", path="lab.nii.gz"),
        Volume(np.zeros((6, 9, 11), np.uint8), lps_affine((2.0, 0.9, 0.9)), "nifti", path="lab.nii.gz"),
    ):
        with pytest.raises(VolumeError) as err:
            align_to(image, other)
        msg = str(err.value)
        assert "lab.nii.gz" in msg and "img.nii.gz" in msg and "LPS" in msg
        assert str(other.shape) in msg and "(6, 9, 11)" in msg


def test_load_pair_reorients_flipped_labels_and_refuses_other_grids(tmp_path, rng):
    image = Volume(rng.random((6, 9, 11)).astype(np.float32), lps_affine(), "nifti")
    labels = rng.integers(0, 3, (6, 9, 11)).astype(np.uint8)
    save_volume(tmp_path / "img.nii.gz", image.array, affine=image.affine)
    flipped = restored(Volume(labels, image.affine, "nifti"), (1,))  # stored LAS for an LPS image
    save_volume(tmp_path / "lab.nii.gz", flipped.array, affine=flipped.affine)
    _, got = load_pair(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")
    assert np.array_equal(got, labels)
    assert "".join(nib.aff2axcodes(flipped.affine)) != "".join(nib.aff2axcodes(image.affine))
    save_volume(tmp_path / "other.nii.gz", labels, affine=lps_affine((1.0, 0.9, 0.8)))
    with pytest.raises(VolumeError, match="different grid"):
        load_pair(tmp_path / "img.nii.gz", tmp_path / "other.nii.gz")


def test_reorient_to_ras_keeps_world_positions_and_undoes_exactly(rng):
    vol = Volume(rng.random((5, 7, 9)).astype(np.float32), lps_affine(), "nifti")
    ras, transform = reorient(vol)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    zz, yy, xx = np.indices(ras.shape).reshape(3, -1)
    world = ras.affine @ np.stack([xx, yy, zz, np.ones_like(xx)])
    ijk = np.round(np.linalg.inv(vol.affine) @ world).astype(int)
    assert np.array_equal(ras.array[zz, yy, xx], vol.array[ijk[2], ijk[1], ijk[0]])
    assert np.array_equal(undo_reorient(ras.array, transform), vol.array)


def blobs(shape, seed=0):
    """Three classes of smooth blobs about 15 voxels across (organ-sized structures)."""
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 5.0)
    return np.digitize(field, np.quantile(field, [0.4, 0.8])).astype(np.uint8)


def test_resampled_labels_go_back_to_the_native_grid_with_dice_above_095():
    labels = blobs((40, 72, 64), seed=3)
    native = Volume(labels, lps_affine((1.0, 0.6, 0.7)), "nifti")
    work, record = to_working_grid(native, (1.3, 1.0, 1.0), labels=True, n_classes=3)
    assert work.shape == (31, 43, 45)
    assert np.allclose(work.spacing, (40 / 31, 0.6 * 72 / 43, 0.7 * 64 / 45))
    back = record.invert(work.array, labels=True, n_classes=3)
    assert back.shape == labels.shape and np.allclose(record.native_affine, native.affine)
    dice = dice_per_class(labels, back, 3)
    assert np.all(dice >= 0.95), dice


def test_working_grid_keeps_the_box_in_world_space():
    vol = Volume(np.zeros((10, 20, 30), np.float32), lps_affine((2.0, 1.0, 0.5)), "nifti")
    work, _ = to_working_grid(vol, (1.0, 1.0, 1.0))
    assert work.shape == (20, 20, 15)

    def box(v):
        corners = np.array([[x, y, z, 1] for x in (-0.5, v.shape[2] - 0.5) for y in (-0.5, v.shape[1] - 0.5)
                            for z in (-0.5, v.shape[0] - 0.5)]).T
        pts = (v.affine @ corners)[:3]
        return pts.min(axis=1), pts.max(axis=1)

    for a, b in zip(box(vol), box(work), strict=True):
        assert np.allclose(a, b)


def test_probabilities_are_inverted_channel_by_channel_into_the_chosen_dtype(rng):
    """Issue 20: 12 classes of a 512 x 512 x 400 scan took about 10 GiB (a list of float32
    channels, then a stacked copy); now the float16 result plus one channel."""
    import tracemalloc

    from scipy import ndimage as ndi

    from helpers.geometry import resize

    probs = rng.random((20, 24, 28, 6)).astype(np.float32)
    half = resize(probs, (40, 30, 35), dtype=np.float16)
    assert half.dtype == np.float16 and half.shape == (40, 30, 35, 6)
    factors = [40 / 20, 30 / 24, 35 / 28]
    for c in range(6):
        reference = ndi.zoom(probs[..., c], factors, order=1, mode="nearest", grid_mode=True)
        assert np.allclose(half[..., c], reference, atol=1e-3)
    big = rng.random((40, 40, 40, 12)).astype(np.float16)
    tracemalloc.start()
    out = resize(big, (80, 80, 80), dtype=np.float16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result, channel = out.nbytes, 80**3 * 4
    assert peak < result + 4 * channel, (peak, result)  # not 12 float32 channels and their stack


def per_class_reference():
    """The route before 2026-12-02, kept in ``benchmarks/label_inversion.py``: every class's
    indicator interpolated over the whole volume, then the argmax."""
    import importlib.util

    script = ROOT / "benchmarks" / "label_inversion.py"
    spec = importlib.util.spec_from_file_location("label_inversion", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.per_class_reference


GRIDS = [((20, 30, 25), (37, 22, 50)), ((40, 40, 40), (13, 71, 40)), ((31, 17, 23), (31, 17, 46))]


@pytest.mark.parametrize("source, target", GRIDS)
def test_label_resize_equals_the_whole_volume_reference_in_one_whole_volume_pass(source, target, monkeypatch):
    from scipy import ndimage as ndi

    from helpers import geometry

    rng = np.random.default_rng(sum(source))
    coarse = rng.integers(0, 4, (5, 6, 7))
    factors = [s / c for s, c in zip(source, coarse.shape, strict=True)]
    labels = ndi.zoom(coarse, factors, order=0).astype(np.uint8)
    labels[0, 0, :3] = 6  # a one-voxel-thick class on the volume's faces
    labels[source[0] // 2, source[1] // 2, source[2] // 2] = 9  # one voxel inside
    labels[-2:, -3:, -1] = 12  # the far corner; classes 5, 7, 8, 10 and 11 are absent
    expected = per_class_reference()(labels, target, 13)
    computed = []
    affine = ndi.affine_transform

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        computed.append(int(np.prod(kwargs["output_shape"])))
        return affine(*args, **kwargs)

    monkeypatch.setattr(geometry.ndi, "affine_transform", counting)
    monkeypatch.setattr(geometry, "RESIZE_SLAB", 7)  # several slabs, so their seams are checked too
    assert np.array_equal(geometry.resize(labels, target, labels=True, n_classes=13), expected)
    # the background once and classes 1-3, which fill the volume, once each, plus the three small
    # classes' boxes: under 5 volumes, where one pass per class computed 13
    assert sum(computed) < 5 * np.prod(target), sum(computed) / np.prod(target)


def test_label_inversion_needs_a_few_slabs_beyond_its_result():
    """Issue 20: inverting a CT's 13 classes held a float32 score over the whole native grid
    (420 MB at 512 x 512 x 400), and one per class while a noisy prediction spread every class."""
    import tracemalloc

    from helpers.geometry import RESIZE_SLAB, resize

    rng = np.random.default_rng(3)
    noisy = rng.integers(0, 13, (80, 60, 60)).astype(np.uint8)  # every class's box is the volume
    target = (320, 120, 120)
    tracemalloc.start()
    out = resize(noisy, target, labels=True, n_classes=13)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    slab = RESIZE_SLAB * target[1] * target[2] * 4  # one float32 slab
    assert peak < out.nbytes + 5 * slab < np.prod(target) * 4, (peak, out.nbytes, slab)
