"""Issues 5 and 9: on-the-fly patch sampling from one or several cases, class-balanced foreground."""

import warnings

import numpy as np
import pytest

from helpers.augmentation import augment_patch
from helpers.datasets import make_sandstone
from helpers.sampling import PatchSampler, class_candidates


def test_sampler_shapes_dtypes_and_determinism(rng):
    image = rng.random((40, 50, 60)).astype(np.float32)
    labels = (image > 0.7).astype(np.uint8) * 2
    s1 = PatchSampler(image, labels, 16, 3, 5, n_classes=3, seed=7)
    s2 = PatchSampler(image, labels, 16, 3, 5, n_classes=3, seed=7)
    x, y = s1[2]
    assert len(s1) == 5
    assert x.shape == (3, 16, 16, 16, 1) and x.dtype == np.float32
    assert y.shape == (3, 16, 16, 16, 3) and y.dtype == np.float32 and np.all(y.sum(-1) == 1)
    assert np.array_equal(x, s2[2][0]) and np.array_equal(y, s2[2][1])
    s1.on_epoch_end()
    assert not np.array_equal(x, s1[2][0])  # new patches each epoch
    assert not np.array_equal(x, PatchSampler(image, labels, 16, 3, 5, n_classes=3, seed=8)[2][0])


def test_sampler_oversamples_foreground():
    labels = np.zeros((64, 64, 64), np.uint8)
    labels[30:34, 30:34, 30:34] = 1  # 0.02 % of the volume
    image = labels.astype(np.float32)
    hits = {}
    for frac in (0.0, 0.33):
        s = PatchSampler(
            image, labels, 8, 10, 30, n_classes=2, foreground_fraction=frac, seed=1, augment=False
        )
        patches = np.concatenate([s.sample(i)[1] for i in range(len(s))])
        hits[frac] = np.mean(patches.reshape(len(patches), -1).max(axis=1) > 0)
    assert hits[0.0] < 0.05
    assert 0.25 < hits[0.33] < 0.45


def test_augmentation_is_identical_for_image_and_labels(rng):
    labels = rng.integers(0, 4, (12, 12, 12)).astype(np.uint8)
    image = labels.astype(np.float32)[..., None]
    for seed in range(20):
        img, lab = augment_patch(image, labels, np.random.default_rng(seed))
        assert np.array_equal(img[..., 0], lab)
    flat = labels[:, :6]
    for seed in range(20):  # non-cubic patch: only rotations that keep the shape
        img, lab = augment_patch(flat.astype(np.float32)[..., None], flat, np.random.default_rng(seed))
        assert lab.shape == (12, 6, 12) and np.array_equal(img[..., 0], lab)


def test_sampler_reads_memmaps_and_pads_small_volumes(tmp_path, rng):
    arr = np.lib.format.open_memmap(tmp_path / "img.npy", mode="w+", dtype=np.float32, shape=(20, 40, 40))
    arr[:] = rng.random(arr.shape)
    labels = np.zeros(arr.shape, np.uint8)
    x, y = PatchSampler(arr, labels, 32, 2, 1, n_classes=2)[0]
    assert x.shape == (2, 32, 32, 32, 1) and y.shape == (2, 32, 32, 32, 2)


def test_sampler_errors(rng):
    with pytest.raises(ValueError, match="labels shape"):
        PatchSampler(np.zeros((8, 8, 8)), np.zeros((8, 8, 9), np.uint8), 4, 1, 1)
    with pytest.raises(ValueError, match="batch_size"):
        PatchSampler(np.zeros((8, 8, 8)), np.zeros((8, 8, 8), np.uint8), 4, 0, 1)


def test_class_candidates_are_exact_below_the_limit_and_bounded_above(rng):
    labels = rng.integers(0, 3, (37, 20, 30)).astype(np.uint8)
    exact = class_candidates(labels, [1, 2], chunk=5)
    for c in (1, 2):
        assert np.array_equal(exact[c], np.flatnonzero(labels == c))
    capped = class_candidates(labels, [1, 2, 7], limit=1000, chunk=5)
    assert set(capped) == {1, 2}  # a class with no voxel is left out
    for c in (1, 2):
        assert abs(len(capped[c]) - 1000) <= 8 and np.all(labels.ravel()[capped[c]] == c)
        assert np.all(np.diff(capped[c]) > 0)


def centre_classes(sampler, batches):
    """Class of the centre voxel of every patch of ``batches`` batches (no augmentation)."""
    centre = tuple(p // 2 for p in sampler.patch)
    return np.concatenate([sampler.sample(i)[1][(slice(None), *centre)] for i in range(batches)])


def test_rare_class_is_centred_as_often_as_a_common_one(rng):
    labels = np.zeros((64, 64, 64), np.uint8)
    inner = (slice(8, 56),) * 3  # foreground away from the border, so no patch is shifted inwards
    labels[inner] = rng.choice([1, 2, 3], size=(48, 48, 48), p=[0.6, 0.39, 0.01])
    image = labels.astype(np.float32)
    assert np.mean(labels == 3) < 0.005  # a rare class
    s = PatchSampler(image, labels, 16, 16, 80, n_classes=4, foreground_fraction=0.33, augment=False, seed=3)
    centres = centre_classes(s, 80)
    # a third of the patches is split evenly over the 3 foreground classes: 0.11 each, plus chance hits
    assert 0.09 < np.mean(centres == 3) < 0.14, np.mean(centres == 3)
    none = PatchSampler(
        image, labels, 16, 16, 80, n_classes=4, foreground_fraction=0.0, augment=False, seed=3
    )
    assert np.mean(centre_classes(none, 80) == 3) < 0.02  # without oversampling, about its share


def test_several_cases_are_drawn_uniformly_and_reproducibly():
    cases = [
        make_sandstone(shape, seed=k) for k, shape in enumerate([(24, 32, 32), (48, 48, 48), (32, 40, 36)])
    ]
    images = [c[0] + 10 * k for k, c in enumerate(cases)]  # the grey level tells which case a patch came from
    labels = [c[1] for c in cases]
    s = PatchSampler(images, labels, 16, 20, 30, n_classes=4, foreground_fraction=0.0, augment=False, seed=5)
    again = PatchSampler(
        images, labels, 16, 20, 30, n_classes=4, foreground_fraction=0.0, augment=False, seed=5
    )
    origin = np.concatenate([np.round(s.sample(i)[0].mean(axis=(1, 2, 3, 4)) / 10) for i in range(30)])
    counts = np.bincount(origin.astype(int), minlength=3) / len(origin)
    assert np.all(np.abs(counts - 1 / 3) < 0.07), counts
    assert np.array_equal(s[4][0], again[4][0]) and np.array_equal(s[4][1], again[4][1])


def test_a_case_smaller_than_the_patch_is_padded_with_a_warning():
    big, small = make_sandstone((40, 40, 40), seed=0), make_sandstone((12, 40, 40), seed=1)
    with pytest.warns(UserWarning, match=r"thin: shape \(12, 40, 40\) is smaller than the patch"):
        s = PatchSampler([big[0], small[0]], [big[1], small[1]], 16, 2, 1, n_classes=4, names=["big", "thin"])
    assert s[0][0].shape == (2, 16, 16, 16, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PatchSampler(big[0], big[1], 16, 2, 1, n_classes=4)


def test_anisotropic_patches(rng):
    image = rng.random((20, 70, 90)).astype(np.float32)
    labels = (image > 0.5).astype(np.uint8)
    x, y = PatchSampler(image, labels, (16, 32, 64), 2, 1, n_classes=2)[0]
    assert x.shape == (2, 16, 32, 64, 1) and y.shape == (2, 16, 32, 64, 2)


def test_labels_beyond_255_keep_their_value_in_the_batch():
    labels = np.zeros((8, 8, 8), np.uint16)
    labels[2:6, 2:6, 2:6] = 300  # label 300 once came out as 44 from a uint8 buffer
    image = labels.astype(np.float32)
    sampler = PatchSampler(image, labels, 8, 2, 1, n_classes=301, augment=False)
    x, y = sampler.sample(0)
    assert y.max() == 300 and np.array_equal(y[0], labels)
    assert sampler[0][1].argmax(-1).max() == 300


def test_given_candidates_are_the_only_foreground_centres_and_must_match_the_cases():
    labels = np.zeros((48, 48, 48), np.uint8)
    labels[4:8, 4:8, 4:8] = 1  # two blobs of class 1; the candidates name only the far one
    labels[40:44, 40:44, 40:44] = 1
    far = np.flatnonzero(labels.ravel() == 1)
    far = far[np.unravel_index(far, labels.shape)[0] >= 40]
    image = labels.astype(np.float32)
    sampler = PatchSampler(image, labels, 16, 8, 4, foreground_fraction=1.0, augment=False, n_classes=2,
                           candidates=[{1: far}])  # fmt: skip
    assert np.array_equal(sampler.candidates[0][1], far)
    x = np.concatenate([sampler.sample(i)[0] for i in range(len(sampler))])
    assert x.shape[0] == 32 and np.all(x[:, 8, 8, 8, 0] == 1)
    starts = [sampler._start(np.random.default_rng(i))[1] for i in range(50)]
    assert all(min(s) >= 32 - 8 for s in starts), "a centre was drawn from the blob the candidates leave out"
    with pytest.raises(ValueError, match="one entry per case"):
        PatchSampler([image, image], [labels, labels], 16, 2, 1, n_classes=2, candidates=[{1: far}])
