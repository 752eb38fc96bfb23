"""Issue 33: 3-D augmentation beyond flips and quarter turns: a zoom, contrast and brightness."""

import numpy as np
import pytest

from helpers import config
from helpers.augmentation import AUGMENTATIONS, augment_patch, flip_and_turn, jitter_intensity, zoom_in
from helpers.sampling import PatchSampler


def ball(radius: float, size: int = 32) -> np.ndarray:
    grid = np.indices((size,) * 3) - (size - 1) / 2
    return (np.sqrt((grid**2).sum(0)) <= radius).astype(np.uint8)


def test_zoom_in_magnifies_about_the_centre_and_keeps_shapes_and_classes():
    labels = ball(6) + 2 * (ball(12) - ball(6))  # class 1 inside a shell of class 2
    image = np.stack([labels.astype(np.float32), -labels.astype(np.float32)], axis=-1)
    grown = []
    for seed in range(5):
        img, lab = zoom_in(image, labels, np.random.default_rng(seed), max_zoom=1.25)
        assert img.shape == image.shape and lab.shape == labels.shape and img.dtype == np.float32
        assert set(np.unique(lab)) <= {0, 1, 2}  # nearest neighbour: no new label values
        assert np.allclose(img[..., 1], -img[..., 0])  # every channel zoomed alike
        grown.append((lab == 1).sum() / (labels == 1).sum())
    assert min(grown) >= 0.97 and max(grown) > 1.3  # up to 1.25^3 = 1.95 times the voxels
    assert max(grown) < 1.25**3 * 1.1


def test_jitter_intensity_stretches_and_shifts_each_channel_within_its_ranges():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 16, 16, 2)).astype(np.float32)
    for seed in range(20):
        out = jitter_intensity(image, np.random.default_rng(seed), contrast=(0.75, 1.25), brightness=0.1)
        ratio = out.std(axis=(0, 1, 2)) / image.std(axis=(0, 1, 2))
        shift = out.mean(axis=(0, 1, 2)) - image.mean(axis=(0, 1, 2))
        assert np.all((ratio > 0.75 - 1e-4) & (ratio < 1.25 + 1e-4)) and np.all(np.abs(shift) <= 0.1 + 1e-5)
        assert out.dtype == np.float32 and not np.shares_memory(out, image)


def test_full_augmentation_draws_the_same_flips_first_and_is_refused_by_a_wrong_name():
    labels = ball(8)
    image = labels[..., None].astype(np.float32)
    flips = flip_and_turn(image, labels, np.random.default_rng(3))
    same = augment_patch(image, labels, np.random.default_rng(3), kind="flips")
    assert all(np.array_equal(a, b) for a, b in zip(flips, same, strict=True))
    full = augment_patch(image, labels, np.random.default_rng(3), kind="full")
    assert full[0].shape == image.shape and not np.array_equal(full[0], same[0])
    with pytest.raises(ValueError, match="kind='rotate'.*flips, full"):
        augment_patch(image, labels, np.random.default_rng(0), kind="rotate")
    assert config.AUGMENTATIONS == AUGMENTATIONS  # the profile's names are the module's


def test_the_sampler_and_the_profiles_take_the_augmentation_by_name():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[10:30, 10:30, 10:30] = 1
    image = labels.astype(np.float32)
    sampler = PatchSampler(image, labels, 32, 2, 1, augment="full", n_classes=2)
    x, y = sampler[0]
    assert x.shape == (2, 32, 32, 32, 1) and np.allclose(y.sum(-1), 1)
    with pytest.raises(ValueError, match="augment='rotate'"):
        PatchSampler(image, labels, 32, 2, 1, augment="rotate")
    assert all(p["augmentation"] == "flips" for p in config.PROFILES.values())
    with pytest.raises(config.ProfileError, match="augmentation.*known augmentations: flips, full"):
        config.get_params("quick", "sandstone", augmentation="rotate")
    assert (
        config.get_params("quick", "sandstone", augmentation="full")["run_dir"]
        != config.get_params("quick", "sandstone")["run_dir"]
    )
