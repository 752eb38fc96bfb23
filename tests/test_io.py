"""Issue 4: formats, geometry, atomic saves and clear errors for bad input."""

import gzip
import os
import random
import warnings

import nibabel as nib
import numpy as np
import pytest

from helpers.geometry import load_pair
from helpers.io import (
    Volume,
    VolumeError,
    check_image,
    check_labels,
    crop_affine,
    load_volume,
    save_volume,
    write_dicom_series,
)


def oblique_affine(flip: bool = True):
    """An oblique (two rotations), anisotropic voxel-to-RAS affine; ``flip`` mirrors the y axis."""
    a, b = np.deg2rad(20), np.deg2rad(-12)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    out = np.eye(4)
    out[:3, :3] = rz @ rx @ np.diag([0.7, -0.9 if flip else 0.9, 2.5])
    out[:3, 3] = [-12.5, 30.0, 7.25]
    return out


def assert_same_mapping(a: Volume, b: Volume) -> None:
    """Every voxel of ``a`` lands on a voxel of ``b`` with the same value (any axis order or flips)."""
    zz, yy, xx = np.indices(a.array.shape[:3]).reshape(3, -1)
    pts = a.affine @ np.stack([xx, yy, zz, np.ones_like(xx)])
    ijk = np.linalg.inv(b.affine) @ pts
    idx = np.round(ijk[:3]).astype(int)
    assert np.allclose(ijk[:3], idx, atol=1e-3)
    assert np.array_equal(b.array[idx[2], idx[1], idx[0]], a.array[zz, yy, xx])


@pytest.fixture
def ref(rng):
    data = rng.integers(-500, 1500, (6, 9, 11)).astype(np.int16)
    return Volume(data, oblique_affine(), "nifti")


@pytest.mark.parametrize("name", ["x.nii", "x.nii.gz", "x.npz", "x.tif", "x.tiff"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_round_trip_keeps_array_dtype_affine_and_orientation(tmp_path, ref, name, dtype):
    array = (ref.array % 200).astype(dtype)
    path = save_volume(tmp_path / name, array, like=ref)
    back = load_volume(path)
    assert back.array.dtype == dtype
    assert np.array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-5)
    assert nib.aff2axcodes(back.affine) == nib.aff2axcodes(ref.affine)
    assert np.allclose(back.spacing, (2.5, 0.9, 0.7))
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_nifti_on_disk_uses_the_nifti_axis_order(tmp_path, ref):
    save_volume(tmp_path / "x.nii.gz", ref.array, like=ref)
    img = nib.load(tmp_path / "x.nii.gz")
    assert img.shape == (11, 9, 6)  # (x, y, z)
    assert np.array_equal(np.asarray(img.dataobj)[3, 2, 1], ref.array[1, 2, 3])


def test_npy_keeps_array_and_warns_that_geometry_is_lost(tmp_path, ref):
    with pytest.warns(UserWarning, match="keeps no geometry"):
        save_volume(tmp_path / "x.npy", ref.array, like=ref)
    back = load_volume(tmp_path / "x.npy")
    assert back.array.dtype == ref.array.dtype and np.array_equal(back.array, ref.array)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_volume(tmp_path / "y.npy", ref.array)  # identity geometry: nothing lost


def test_multichannel_round_trip(tmp_path, rng):
    v = rng.random((5, 6, 7, 2)).astype(np.float32)
    for name in ("m.nii.gz", "m.npz", "m.tif"):
        back = load_volume(save_volume(tmp_path / name, v))
        assert back.array.shape == v.shape and np.allclose(back.array, v), name


def test_tiff_spacing_from_imagej_metadata(tmp_path, rng):
    import tifffile

    v = rng.integers(0, 255, (4, 8, 10)).astype(np.uint8)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        v,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"spacing": 0.5, "unit": "um", "axes": "ZYX"},
    )
    back = load_volume(tmp_path / "ij.tif")
    assert np.array_equal(back.array, v)
    assert np.allclose(back.spacing, (0.5e-3, 0.25e-3, 0.25e-3))  # micrometres, in mm


def test_tiff_without_metadata_has_unit_spacing(tmp_path, rng):
    import tifffile

    v = rng.integers(0, 255, (4, 8, 10)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", v, metadata=None, photometric="minisblack")
    assert load_volume(tmp_path / "plain.tif").spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("resolution", "unit", "imagej_unit", "spacing", "warns"),
    [
        (72.0, "INCH", None, 25.4 / 72, False),  # once read as 0.0139 mm
        (40.0, "CENTIMETER", None, 0.25, False),  # once read as 0.025
        (2.0, "NONE", None, 0.5, True),
        (4.0, None, "furlong", 0.25, True),
        (4.0, None, "mm", 0.25, False),
    ],
)
def test_tiff_spacing_honours_the_resolution_unit(tmp_path, resolution, unit, imagej_unit, spacing, warns):
    import tifffile

    path = tmp_path / "stack.tif"
    v = np.zeros((4, 8, 10), np.uint8)
    if imagej_unit:
        meta = {"unit": imagej_unit, "axes": "ZYX", "spacing": 2.0}
        tifffile.imwrite(path, v, imagej=True, resolution=(resolution, resolution), metadata=meta)
    else:
        tifffile.imwrite(
            path, v, photometric="minisblack", resolution=(resolution, resolution), resolutionunit=unit
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load_volume(path)
    assert np.allclose(vol.spacing[1:], (spacing, spacing)), vol.spacing
    messages = [str(w.message) for w in caught]
    assert any(str(path) in m and "taken as millimetres" in m for m in messages) == warns, messages


def test_a_saved_tiff_tells_other_readers_its_size_in_centimetres(tmp_path):
    import tifffile

    save_volume(tmp_path / "s.tif", np.zeros((3, 4, 5), np.uint8), affine=np.diag([0.5, 0.25, 2.0, 1.0]))
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        tags = tif.pages.first.tags
        assert tags["ResolutionUnit"].value == 3 and tags["XResolution"].value == (20, 1)
    assert np.allclose(load_volume(tmp_path / "s.tif").spacing, (2.0, 0.25, 0.5))


def world(affine, z, y, x):
    return (affine @ np.array([x, y, z, 1.0]))[:3]


def test_dicom_series_matches_nifti_of_same_data(tmp_path, rng):
    hu = rng.integers(-1000, 2000, (7, 12, 10)).astype(np.float32)
    affine = oblique_affine(flip=False)
    files = write_dicom_series(tmp_path / "ct", hu, affine, slope=0.5, intercept=-1024.0)
    random.Random(0).shuffle(files)
    for source in (tmp_path / "ct", files):
        vol = load_volume(source)
        assert vol.source_format == "dicom"
        np.testing.assert_allclose(vol.array, hu, atol=0.5)  # slope 0.5: stored rounding
        np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    nifti = load_volume(save_volume(tmp_path / "ct.nii.gz", vol.array, like=vol))
    np.testing.assert_allclose(nifti.affine, vol.affine, atol=1e-6)
    assert np.array_equal(nifti.array, vol.array)


def test_flipped_dicom_series_keeps_the_voxel_to_world_mapping(tmp_path, rng):
    """Slices are ordered along the normal, so a left-handed grid may come back z-reversed,
    but every voxel keeps its world position and value."""
    hu = rng.integers(-1000, 2000, (7, 12, 10)).astype(np.float32)
    affine = oblique_affine(flip=True)
    files = write_dicom_series(tmp_path / "ct", hu, affine, slope=0.5, intercept=-1024.0)
    random.Random(1).shuffle(files)
    vol = load_volume(files)
    assert_same_mapping(Volume(np.round(hu * 2) / 2, affine), vol)
    assert nib.aff2axcodes(vol.affine)[:2] == nib.aff2axcodes(affine)[:2]


def test_dicom_geometry_follows_the_standard_not_our_writer(tmp_path):
    """World positions computed straight from the DICOM tags, independent of helpers.io."""
    import pydicom

    hu = np.zeros((5, 4, 6), np.float32)
    files = write_dicom_series(tmp_path / "s", hu, oblique_affine())
    vol = load_volume(tmp_path / "s")
    for f in files:
        ds = pydicom.dcmread(f)
        ipp = np.array(ds.ImagePositionPatient, float)
        row_cos, col_cos = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        z = int(np.argmin([np.linalg.norm(world(vol.affine, k, 0, 0) * [-1, -1, 1] - ipp) for k in range(5)]))
        for r, c in [(0, 0), (3, 5), (2, 1)]:
            lps = ipp + c * dc * row_cos + r * dr * col_cos
            np.testing.assert_allclose(world(vol.affine, z, r, c), lps * [-1, -1, 1], atol=1e-4)


def test_dicom_and_flipped_converter_nifti_describe_the_same_mapping(tmp_path, rng):
    """A converter may store rows flipped (as dcm2niix does); the voxel-to-world mapping must agree."""
    hu = rng.integers(-100, 100, (6, 8, 9)).astype(np.float32)
    affine = oblique_affine()
    write_dicom_series(tmp_path / "d", hu, affine)
    dicom = load_volume(tmp_path / "d")
    # converter output: x-y-z storage with the row (y) axis flipped and its affine adjusted
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, hu.shape[1] - 1
    img = nib.Nifti1Image(np.swapaxes(hu[:, ::-1, :], 0, 2), affine @ flip)
    nib.save(img, tmp_path / "conv.nii.gz")
    conv = load_volume(tmp_path / "conv.nii.gz")
    assert_same_mapping(dicom, conv)
    assert_same_mapping(conv, dicom)


def test_crop_affine_keeps_world_positions(ref):
    region = (slice(2, 5), slice(1, 9), slice(3, 11))
    sub = crop_affine(ref.affine, region)
    np.testing.assert_allclose(world(sub, 0, 0, 0), world(ref.affine, 2, 1, 3))
    np.testing.assert_allclose(world(sub, 1, 2, 3), world(ref.affine, 3, 3, 6))


def test_interrupted_save_leaves_the_old_file_and_no_partial(tmp_path, ref, monkeypatch):
    target = save_volume(tmp_path / "keep.nii.gz", ref.array, like=ref)
    before = target.read_bytes()

    def crash(img, filename):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_volume(target, ref.array * 2, like=ref)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]


# ----------------------------------------------------------------- one test per bad input


def assert_names(err, path, *words):
    msg = str(err.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg


def test_missing_path(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    assert_names(err, path, "no such file")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.mha"
    path.write_bytes(b"x")
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    assert_names(err, path, "unsupported extension", ".mha", ".nii.gz")


@pytest.mark.parametrize("name", ["t.nii.gz", "t.npy", "t.npz", "t.tif", "t.nii"])
def test_corrupt_or_truncated_file(tmp_path, ref, name):
    good = save_volume(tmp_path / f"good_{name}", ref.array.astype(np.float32))
    path = tmp_path / name
    path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    assert_names(err, path, "corrupt or truncated")


@pytest.mark.parametrize("name", ["e.npy", "e.npz", "e.nii", "e.nii.gz"])
def test_an_empty_file_is_called_empty(tmp_path, name):
    """Issue 35: a 0-byte .npy or .npz was refused as "no NumPy header", an empty .nii as "Empty file"."""
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    assert_names(err, path)
    assert "empty file" in str(err.value).lower(), err.value


def test_garbage_gzip_is_corrupt(tmp_path):
    path = tmp_path / "g.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 3))
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    assert_names(err, path, "corrupt")


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    assert_names(err, path, "pickled")


def test_empty_dicom_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "README.txt").write_text("no images here")
    with pytest.raises(VolumeError) as err:
        load_volume(folder)
    assert_names(err, folder, "no DICOM image files")


def test_dicom_folder_mixing_series(tmp_path, rng):
    folder = tmp_path / "mixed"
    write_dicom_series(folder, np.zeros((3, 4, 4)), np.eye(4), series_uid="1.2.3.4", description="T1")
    write_dicom_series(folder, np.zeros((2, 4, 4)), np.eye(4), series_uid="1.2.3.5", description="T2")
    with pytest.raises(VolumeError) as err:
        load_volume(folder)
    assert_names(err, folder, "mixes 2 DICOM series", "1.2.3.4", "1.2.3.5", "T1", "series_uid=")
    assert load_volume(folder, series_uid="1.2.3.5").array.shape == (2, 4, 4)


def test_dicom_duplicated_slice_positions(tmp_path):
    import pydicom

    folder = tmp_path / "dup"
    files = write_dicom_series(folder, np.zeros((4, 4, 4)), np.eye(4))
    a, b = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    b.ImagePositionPatient = a.ImagePositionPatient
    b.save_as(files[1])
    with pytest.raises(VolumeError) as err:
        load_volume(folder)
    assert_names(err, folder, "duplicated slice position")


def test_dicom_uneven_spacing_warns(tmp_path):
    import pydicom

    folder = tmp_path / "uneven"
    files = write_dicom_series(folder, np.zeros((4, 4, 4)), np.eye(4))
    ds = next(d for d in map(pydicom.dcmread, files) if abs(d.ImagePositionPatient[2] - 3.0) < 1e-6)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 3.6]
    ds.save_as(next(f for f in files if pydicom.dcmread(f).SOPInstanceUID == ds.SOPInstanceUID))
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        load_volume(folder)


def test_two_dimensional_data(tmp_path):
    path = tmp_path / "slice.npy"
    np.save(path, np.zeros((32, 32)))
    with pytest.raises(VolumeError) as err:
        load_volume(path)
    assert_names(err, path, "2-D", "3-D volume is needed")
    with pytest.raises(VolumeError) as err:
        save_volume(tmp_path / "s.nii.gz", np.zeros((4, 4)))
    assert "3-D" in str(err.value)


def test_single_dicom_slice_is_2d(tmp_path):
    files = write_dicom_series(tmp_path / "one", np.zeros((1, 4, 4)), np.eye(4))
    with pytest.raises(VolumeError) as err:
        load_volume(files[0])
    assert_names(err, files[0], "single slice", "2-D")


def test_image_label_shape_mismatch(tmp_path):
    img = save_volume(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32))
    lab = save_volume(tmp_path / "lab.nii.gz", np.zeros((4, 5, 7), np.uint8))
    with pytest.raises(VolumeError) as err:
        load_pair(img, lab)
    assert_names(err, lab, "different grid", str(img), "(4, 5, 7)", "(4, 5, 6)")


@pytest.mark.parametrize(
    ("labels", "n_classes", "words"),
    [
        (np.full((3, 3, 3), 1.5), None, "non-integer"),
        (np.full((3, 3, 3), -1, np.int16), None, "negative"),
        (np.full((3, 3, 3), 4, np.uint8), 4, "n_classes=4"),
    ],
)
def test_bad_label_values(tmp_path, labels, n_classes, words):
    img = save_volume(tmp_path / "img.nii.gz", np.zeros((3, 3, 3), np.float32))
    lab = save_volume(tmp_path / "lab.nii.gz", labels)
    with pytest.raises(VolumeError) as err:
        load_pair(img, lab, n_classes=n_classes)
    assert_names(err, lab, words)


def test_good_pair_loads(tmp_path):
    img = save_volume(tmp_path / "img.nii.gz", np.ones((3, 3, 3), np.float32))
    lab = save_volume(tmp_path / "lab.nii.gz", np.full((3, 3, 3), 2.0, np.float32))
    image, labels = load_pair(img, lab, n_classes=3)
    assert labels.dtype == np.uint8 and labels.max() == 2 and image.array.shape == (3, 3, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(tmp_path, bad):
    v = np.zeros((3, 3, 3), np.float32)
    v[1, 1, 1] = bad
    img = save_volume(tmp_path / "img.nii.gz", v)
    lab = save_volume(tmp_path / "lab.nii.gz", np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(VolumeError) as err:
        load_pair(img, lab)
    assert_names(err, img, "NaN or Inf")
    with pytest.raises(VolumeError, match="NaN or Inf"):
        check_image(v, "array")


def test_check_labels_accepts_integral_floats_and_returns_uint8():
    out = check_labels(np.array([[[0.0, 1.0], [2.0, 3.0]]]), n_classes=4)
    assert out.dtype == np.uint8 and out.max() == 3


def test_save_refuses_shape_mismatch_with_reference_and_missing_folder(tmp_path, ref):
    with pytest.raises(VolumeError, match="differs from the reference"):
        save_volume(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), like=ref)
    with pytest.raises(VolumeError, match="does not exist"):
        save_volume(tmp_path / "no" / "x.nii.gz", ref.array)
    assert os.listdir(tmp_path) == []


def test_atomic_writes_get_normal_permissions_and_leave_nothing_on_failure(tmp_path):
    from helpers.io import atomic_path, write_text_atomic

    umask = os.umask(0)
    os.umask(umask)
    path = write_text_atomic(tmp_path / "summary.md", "hello\n")
    assert path.read_text() == "hello\n"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert path.read_text() == "hello\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_dicom_writer_refuses_values_it_cannot_store_and_scales_floats(tmp_path, rng):
    piece = rng.random((4, 6, 8)).astype(np.float32) * 3.0
    with pytest.raises(VolumeError, match="do not fit int16"):
        write_dicom_series(tmp_path / "wrap", piece * 1000, np.eye(4), slope=0.001, intercept=0.0)
    back = load_volume(write_dicom_series(tmp_path / "auto", piece, np.eye(4))[0].parent)
    assert np.abs(back.array - piece).max() <= 3.0 / 65000 / 2 + 1e-6
    hu = rng.integers(-1000, 2000, (3, 4, 5)).astype(np.int16)
    written = write_dicom_series(tmp_path / "int", hu, np.eye(4))
    assert np.array_equal(load_volume(written[0].parent).array, hu)


# ----------------------------------------------------------------- issue 23: sizes and leftovers


@pytest.mark.parametrize(
    ("shape", "nifti2", "needed"),
    [
        ((1024, 1024, 2048), False, "2,147,484,000"),
        ((2048, 2048, 1024), False, "4,294,967,648"),
        ((2**32 + 1, 1, 1), True, "4,294,967,841"),
        ((2048, 2048, 8192), False, "34,359,738,720"),
    ],
)
def test_a_forged_size_claim_is_refused_with_its_true_numbers_in_little_memory(
    tmp_path, shape, nifti2, needed
):
    import tracemalloc

    from bad_inputs import _nifti_claim

    call, path = _nifti_claim(shape, nifti2)(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError) as err:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_names(err, path, "declares", f"({needed} bytes with the header)", "decompresses to only")
    assert peak < 100e6, peak
    from helpers.io import check_nifti_size  # what the zarr converter checks before reading slabs

    tracemalloc.start()
    try:
        with pytest.raises(VolumeError, match="decompresses to only"):
            check_nifti_size(path, nib.load(path))
        assert tracemalloc.get_traced_memory()[1] < 100e6
    finally:
        tracemalloc.stop()


def test_gzip_members_and_scaled_data_load_as_nibabel_reads_them_but_in_float32(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4) - 50
    img = nib.Nifti1Image(raw, np.diag([2.0, 3.0, 4.0, 1.0]))
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, tmp_path / "scaled.nii")
    expected = np.swapaxes(np.asarray(nib.load(tmp_path / "scaled.nii").dataobj), 0, 2)
    data = (tmp_path / "scaled.nii").read_bytes()
    half = len(data) // 2  # two concatenated gzip members, zero padding after them, as gzip reads them
    (tmp_path / "members.nii.gz").write_bytes(
        gzip.compress(data[:half]) + gzip.compress(data[half:]) + b"\0" * 8
    )
    for name in ("scaled.nii", "members.nii.gz"):
        vol = load_volume(tmp_path / name)
        assert vol.array.dtype == np.float32, name
        assert np.array_equal(vol.array, expected), name
        assert np.allclose(vol.affine, img.affine)


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_a_dead_writers_partial_file_goes_with_the_next_write_or_read_in_its_folder(tmp_path, ref):
    scan = save_volume(tmp_path / "scan.nii.gz", ref.array, like=ref)
    dead = tmp_path / f".seg.nii.gz.{dead_pid()}.k2x_9abc.partial.nii.gz"
    live = tmp_path / f".seg.nii.gz.{os.getppid()}.q7y_1def.partial.nii.gz"
    for path in (dead, live):
        path.write_bytes(b"half a file")
    save_volume(tmp_path / "other.npz", ref.array)  # a write to another file of the folder
    assert not dead.exists() and live.exists()
    dead.write_bytes(b"half a file")
    load_volume(scan)  # a read beside it
    assert not dead.exists() and live.exists()


def test_a_tilted_dicom_series_is_resampled_orthogonal_and_saved_with_agreeing_qform_and_sform(tmp_path):
    tilt = np.deg2rad(20)  # gantry tilt: each 2.5 mm slice moves 0.91 mm along y (posterior in LPS)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[1, 2] = 2.5 * np.tan(tilt)
    array = np.zeros((8, 24, 20), np.float32)
    array[5, 10, 7] = 1000.0  # a bright point: where is it in the world?
    point = (affine @ [7, 10, 5, 1])[:3]
    files = write_dicom_series(tmp_path / "tilted", array, affine)
    with pytest.warns(UserWarning, match=r"tilted by 20\.00 degrees.*dcm2niix"):
        vol = load_volume(files[0].parent)
    columns = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    assert np.allclose(columns.T @ columns, np.eye(3), atol=1e-6)  # an orthogonal grid
    ijk = np.argwhere(vol.array > 0)  # (z, y, x) of the resampled point's spread
    weights = vol.array[vol.array > 0]
    centre = (weights[:, None] * ijk[:, ::-1]).sum(0) / weights.sum()
    assert np.allclose((vol.affine @ [*centre, 1])[:3], point, atol=0.05)  # the point stayed put
    seg = save_volume(tmp_path / "seg.nii.gz", (vol.array > 0).astype(np.uint8), like=vol)
    img = nib.load(seg)
    corner = np.array([*np.array(img.shape) - 1, 1.0])
    assert img.header["qform_code"] > 0 and img.header["sform_code"] > 0
    assert np.allclose(img.get_qform() @ corner, img.get_sform() @ corner, atol=1e-3)


def test_a_sheared_affine_is_never_written_with_a_qform_that_disagrees(tmp_path):
    sheared = np.diag([1.0, 1.0, 2.0, 1.0])
    sheared[0, 2] = 0.7
    img = nib.load(save_volume(tmp_path / "s.nii.gz", np.zeros((6, 5, 4), np.uint8), affine=sheared))
    assert img.header["qform_code"] == 0 and img.header["sform_code"] == 1
    assert np.allclose(img.get_sform(), sheared) and np.allclose(img.affine, sheared)
