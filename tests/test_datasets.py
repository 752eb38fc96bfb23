"""Embedded datasets, the honest split, and the multi-Otsu baseline."""

import numpy as np
import pytest

from helpers.datasets import (
    BRAIN_CLASSES,
    SANDSTONE_CLASSES,
    load_brain_mri,
    load_dataset,
    make_sandstone,
)
from helpers.evaluation import multiotsu_baseline
from helpers.metrics import evaluate
from helpers.sampling import PatchSampler
from helpers.splits import slab_index, split_slabs


@pytest.fixture(scope="module")
def sandstone():
    return make_sandstone((96, 96, 96), seed=0)


def test_sandstone_types_and_phases(sandstone):
    image, labels = sandstone
    assert image.dtype == np.float32 and labels.dtype == np.uint8
    assert image.shape == labels.shape == (96, 96, 96)
    fractions = np.bincount(labels.ravel(), minlength=4) / labels.size
    assert len(fractions) == len(SANDSTONE_CLASSES) == 4
    assert fractions[2] > 0.3 and fractions[0] > 0.15  # quartz grains, pores
    assert 0.02 < fractions[1] < 0.3 and 0.002 < fractions[3] < 0.06  # clay, pyrite
    means = [image[labels == c].mean() for c in range(4)]
    assert means == sorted(means)  # pore < clay < quartz < pyrite


def test_sandstone_is_deterministic_and_seeded():
    a = make_sandstone((40, 48, 56), seed=3)
    b = make_sandstone((40, 48, 56), seed=3)
    c = make_sandstone((40, 48, 56), seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_sandstone_is_hard_for_multiotsu(sandstone):
    image, labels = sandstone
    held = slab_index(split_slabs(image.shape, 0)["test"], 0)
    score = evaluate(labels[held], multiotsu_baseline(image[held], 4), SANDSTONE_CLASSES)
    assert score["mean_iou"] < 0.85
    assert score["mean_iou"] > 0.1  # but it is not noise either


def test_brain_is_the_real_mni152_template():
    vol, labels = load_brain_mri()
    assert vol.array.shape == labels.shape == (189, 233, 197)  # (z, y, x) of 197 x 233 x 189
    assert np.allclose(vol.spacing, (1.0, 1.0, 1.0))
    assert vol.array.dtype == np.float32 and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.allclose(vol.affine[:3, 3], [-98, -134, -72])
    wm, gm = vol.array[labels == 2].mean(), vol.array[labels == 1].mean()
    assert wm > gm  # T1: white matter is brighter than grey matter


def test_brain_zoom_scales_geometry():
    vol, labels = load_brain_mri(zoom=0.5)
    assert vol.array.shape == labels.shape == (94, 116, 98)
    # grid mode: 94 voxels cover the 189 mm the 189 voxels covered, so each is 189 / 94 mm
    assert np.allclose(vol.spacing, (189 / 94, 233 / 116, 197 / 98))
    assert np.allclose(vol.affine @ [-0.5, -0.5, -0.5, 1], [-98.5, -134.5, -72.5, 1])  # the same outer corner
    assert load_dataset("brain", brain_zoom=0.5).class_names == BRAIN_CLASSES


@pytest.mark.parametrize(("shape", "axis"), [((100, 20, 30), 0), ((10, 20, 31), 2)])
def test_three_slabs_are_disjoint_and_complete(shape, axis):
    bounds = split_slabs(shape, axis)
    mark = np.zeros(shape, np.int8)
    for k, part in enumerate(("train", "val", "test")):
        mark[slab_index(bounds[part], axis)] += 1 << k
    assert set(np.unique(mark)) == {1, 2, 4}
    assert bounds["test"][1] == shape[axis] and bounds["train"][0] == 0


def test_slab_split_rejects_bad_fractions_and_short_axes():
    with pytest.raises(ValueError, match="fractions"):
        split_slabs((10, 10, 10), 0, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="too short"):
        split_slabs((2, 10, 10), 0)


def test_patches_never_straddle_the_split():
    shape = (96, 40, 40)
    z = np.broadcast_to(np.arange(96, dtype=np.float32)[:, None, None], shape)
    labels = np.ones(shape, np.uint8)
    train = slab_index(split_slabs(shape, 0)["train"], 0)
    sampler = PatchSampler(z[train], labels[train], 32, 4, 20, n_classes=2, seed=0)
    for i in range(len(sampler)):
        x, _ = sampler.sample(i)
        assert x.max() < 58  # no voxel from the validation or test slabs (z >= 58)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("lung")


@pytest.mark.parametrize("n", [3, 4, 5, 7])
@pytest.mark.parametrize("fractions", [(0.2, 0.4, 0.4), (0.1, 0.45, 0.45), (0.6, 0.2, 0.2)])
def test_split_by_case_never_leaves_a_part_empty(n, fractions):
    from helpers.splits import split_cases

    split = split_cases([f"c{i}" for i in range(n)], seed=0, fractions=fractions)
    assert all(split[p] for p in ("train", "val", "test")), split
    assert sorted(sum(split.values(), [])) == sorted(f"c{i}" for i in range(n))


@pytest.mark.parametrize("zoom", [0.5, 0.37, 1.6])
def test_zoomed_brain_affine_places_every_voxel_where_zoom_sampled_it(zoom):
    from helpers.datasets import zoom_with_affine

    affine = np.array([[-1.0, 0, 0, 98], [0, 1.0, 0, -134], [0, 0, 1.0, -72], [0, 0, 0, 1]])
    shape = (40, 46, 38)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    world = np.einsum("ij,j...->i...", affine[:3], np.stack([x, y, z, np.ones_like(x)]))
    ramp = (world[0] + 2 * world[1] - 3 * world[2]).astype(np.float32)  # linear in world mm
    out, new = zoom_with_affine(ramp, affine, zoom, order=1)
    k = np.argwhere(np.ones(out.shape, bool))[:, ::-1]  # (x, y, z) of every new voxel
    pos = new[:3, :3] @ k.T + new[:3, 3:4]
    expected = (pos[0] + 2 * pos[1] - 3 * pos[2]).reshape(out.shape)
    inner = tuple(slice(2, -2) for _ in range(3))  # away from the clamped border
    assert np.abs(out[inner] - expected[inner]).max() < 1e-3


# ------------------------------------------------------------------ issue 32: the demos as several cases


@pytest.mark.parametrize("profile", ["quick", "cpu"])
@pytest.mark.parametrize("name", ["sandstone", "brain"])
def test_embedded_demos_are_split_by_case_into_whole_cases_of_a_patch_or_more(name, profile, tmp_path):
    from helpers.config import get_params
    from helpers.experiment import patch_shape, prepare

    params = get_params(profile, name, output_dir=str(tmp_path))
    ds = prepare(params)
    assert ds.split["kind"] == "cases"
    counts = [len(ds.split[p]) for p in ("train", "val", "test")]
    assert counts[0] >= 3 and counts[1] >= 1 and counts[2] >= 1, counts
    patch = patch_shape(ds, params)
    for part in ("val", "test"):
        for case, region in ds.part(part):
            assert region == (slice(None),) * 3  # a whole case, not a slab
            assert all(s >= p for s, p in zip(case.shape, patch, strict=True)), (case.name, case.shape, patch)
    names = [c.name for c in ds.cases]
    assert sorted(n for p in ("train", "val", "test") for n in ds.split[p]) == sorted(names)
    assert set(ds.case_stats) == set(names)


def test_sandstone_cores_differ_in_their_phase_statistics():
    from helpers.demos import make_sandstone_cores

    cores = make_sandstone_cores((40, 40, 40), 5, seed=0)
    again = make_sandstone_cores((40, 40, 40), 5, seed=0)
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(cores, again, strict=True))
    fractions = np.array([np.bincount(c.labels.ravel(), minlength=4) / c.labels.size for c in cores])
    spread = fractions.max(axis=0) - fractions.min(axis=0)
    assert spread[2] > 0.05 and spread[1] > 0.02  # quartz and clay content vary between cores
    assert fractions[:, 3].max() > 1.5 * fractions[:, 3].min() > 0  # so does pyrite, present in each


def test_brain_subjects_differ_and_each_white_matter_is_one_object():
    """The old test part was a frontal slab of the symmetric template, whose white matter was
    two hemispheres; a whole subject's white matter is one connected object."""
    from scipy import ndimage as ndi

    from helpers.demos import make_brain_subjects

    subjects, affine = make_brain_subjects(0.25, 3, seed=0)
    assert affine.shape == (4, 4)
    a, b = subjects[0], subjects[1]
    assert a.image.shape == b.image.shape and not np.array_equal(a.labels, b.labels)
    assert np.mean(a.labels != b.labels) > 0.02  # different anatomy, not a copy
    for s in subjects:
        assert set(np.unique(s.labels)) == {0, 1, 2}
        assert s.image[s.labels == 2].mean() > s.image[s.labels == 1].mean()  # T1 contrast kept
        parts, n = ndi.label(s.labels == 2)
        largest = np.bincount(parts.ravel())[1:].max()
        assert largest > 0.9 * np.count_nonzero(s.labels == 2), s.name


def test_fitted_thresholds_find_the_known_best_thresholds():
    """Three classes, Gaussian intensities of equal spread and equal counts: the best thresholds lie
    half-way between neighbouring means. Class 1 is the brightest, so the order is 0, 2, 1."""
    from helpers.evaluation import apply_thresholds, fit_thresholds

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 40, 40)).astype(np.uint8)
    means = np.array([0.0, 3.0, 1.0])
    image = means[labels] + rng.normal(0, 0.15, labels.shape)
    thresholds, order = fit_thresholds([image], [labels], 3)
    assert order.tolist() == [0, 2, 1]
    assert np.allclose(thresholds, [0.5, 2.0], atol=0.03), thresholds
    guess = apply_thresholds(image, thresholds, order)
    assert np.mean(guess == labels) > 0.99
    # multi-Otsu knows no labels: it puts the classes in intensity order, so class 1 and 2 swap
    assert np.mean(multiotsu_baseline(image, 3) == labels) < 0.5


def test_fitted_thresholds_beat_multiotsu_where_classes_are_unequal_in_size():
    from helpers.evaluation import apply_thresholds, fit_thresholds

    rng = np.random.default_rng(1)
    labels = (rng.random((40, 40, 40)) < 0.1).astype(np.uint8)  # a rare bright class
    image = labels * 1.0 + rng.normal(0, 0.3, labels.shape)
    thresholds, order = fit_thresholds([image], [labels], 2)
    fitted = evaluate(labels, apply_thresholds(image, thresholds, order), ("bg", "fg"))["mean_iou"]
    otsu = evaluate(labels, multiotsu_baseline(image, 2), ("bg", "fg"))["mean_iou"]
    assert fitted > otsu + 0.02, (fitted, otsu)
    with pytest.raises(ValueError, match="2 or more"):
        fit_thresholds([image], [np.zeros_like(labels)], 2)
