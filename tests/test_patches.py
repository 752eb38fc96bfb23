"""Issue 3: windows, padding, extraction, stitching and streaming inference."""

import math

import numpy as np
import patchify
import pytest

from helpers.inference import predict_volume
from helpers.patches import (
    BLENDS,
    crop_to_shape,
    extract_patches,
    gaussian_weights,
    pad_to_patch,
    patch_memory_bytes,
    sliding_windows,
    stitch_patches,
    window_starts,
)

SHAPES = [(100, 100, 100), (129, 64, 70), (20, 300, 300), (33, 33, 33)]
OVERLAPS = [0.0, 0.25, 0.5]


def identity(batch):
    return batch


@pytest.mark.parametrize("shape", SHAPES + [(64, 64, 64), (200, 65, 1)])
@pytest.mark.parametrize("overlap", OVERLAPS + [0.9])
def test_windows_cover_every_voxel(shape, overlap):
    padded = tuple(max(s, 64) for s in shape)
    hits = np.zeros(padded, dtype=np.int32)
    for w in sliding_windows(shape, 64, overlap):
        assert all(s.stop - s.start == 64 for s in w)
        hits[w] += 1
    assert hits.min() >= 1


def test_window_starts_follow_nnunet_spacing():
    # n = ceil((size - patch) / step) + 1, rounded linspace, last window flush with the border
    assert window_starts(200, 64, 0.5) == [0, 27, 54, 82, 109, 136]
    for size in (65, 100, 129, 300, 513):
        starts = window_starts(size, 64, 0.5)
        assert len(starts) == math.ceil((size - 64) / 32) + 1
        assert starts[0] == 0 and starts[-1] == size - 64
        gaps = np.diff(starts)
        assert gaps.max() - gaps.min() <= 1 and gaps.max() <= 32
    assert window_starts(30, 64, 0.5) == [0]


def test_patch_size_as_tuple():
    w = sliding_windows((50, 80, 40), (16, 32, 40), 0.0)
    assert {tuple(s.stop - s.start for s in win) for win in w} == {(16, 32, 40)}


@pytest.mark.parametrize("shape", [(10, 70, 3), (64, 64, 64), (1, 1, 1)])
def test_pad_to_patch_is_inverted_exactly(shape, rng):
    v = rng.random(shape).astype(np.float32)
    padded, crop = pad_to_patch(v, 64)
    assert padded.shape == tuple(max(s, 64) for s in shape)
    assert np.array_equal(crop_to_shape(padded, crop), v)


def test_pad_to_patch_keeps_channels_and_skips_copy_when_not_needed(rng):
    v = rng.random((70, 70, 70, 2))
    assert pad_to_patch(v, 64)[0] is v
    padded, crop = pad_to_patch(v[:10], 64)
    assert padded.shape == (64, 70, 70, 2) and np.array_equal(padded[crop], v[:10])


def test_extract_patches_matches_patchify_without_overlap(rng):
    v = rng.random((128, 64, 192)).astype(np.float32)
    ours, windows = extract_patches(v, 64, 0.0)
    ref = patchify.patchify(v, (64, 64, 64), step=64)
    assert np.array_equal(ours, ref.reshape(-1, 64, 64, 64))
    assert len(windows) == 2 * 1 * 3


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("overlap", OVERLAPS)
def test_identity_round_trip_is_exact(shape, blend, overlap, rng):
    v = rng.random(shape).astype(np.float32)
    out = predict_volume(identity, v, 64, overlap, batch_size=8, blend=blend, progress=False)
    assert out.shape == (*shape, 1)
    np.testing.assert_allclose(out[..., 0], v, atol=1e-6)
    stitched = stitch_patches(*extract_patches(v, 64, overlap), shape=v.shape, blend=blend)
    np.testing.assert_allclose(stitched, v, atol=1e-6)


def test_multichannel_volume_and_integer_dtype(rng):
    v = rng.integers(0, 1000, (40, 70, 90, 2)).astype(np.int16)
    out = predict_volume(identity, v, 32, 0.5, batch_size=3, progress=False)
    np.testing.assert_allclose(out, v.astype(np.float32), atol=1e-3)


def three_class(batch):
    x = batch[..., :1]
    return np.concatenate([x, 1 - x, np.sin(7 * x) ** 2], axis=-1)


@pytest.mark.parametrize("shape", [(100, 100, 100), (20, 300, 300), (33, 33, 33)])
@pytest.mark.parametrize("blend", BLENDS)
def test_labels_equal_argmax_of_probabilities(shape, blend, rng):
    v = rng.random(shape).astype(np.float32)
    probs = predict_volume(three_class, v, 64, 0.5, 8, blend, "probabilities", progress=False)
    labels = predict_volume(three_class, v, 64, 0.5, 8, blend, "labels", progress=False)
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert np.array_equal(labels, probs.argmax(-1))


@pytest.mark.parametrize(("classes", "dtype"), [(5, np.int16), (300, np.int32)])
def test_labels_keep_the_first_of_equal_scores_as_argmax_does(classes, dtype, rng):
    """Scores in steps of a quarter tie often; the labels are np.argmax's (the lowest class of
    the highest score) with any number of classes and any integer ``out``."""
    v = rng.random((24, 20, 18)).astype(np.float32)
    steps = rng.integers(0, 4, (256, classes)).astype(np.float32) / 4

    def tied(batch):  # each voxel's scores: one of 256 rows of ties, picked by its value
        return steps[(batch[..., 0] * 255).astype(int)]

    probs = predict_volume(tied, v, 16, 0.5, 4, "none", progress=False)
    out = np.full(v.shape, -1, dtype)
    labels = predict_volume(tied, v, 16, 0.5, 4, "none", "labels", progress=False, out=out)
    assert labels is out and np.array_equal(labels, probs.argmax(-1))
    assert (probs == probs.max(-1, keepdims=True)).sum(-1).max() > 1  # ties were there to break


def test_single_channel_labels_threshold_at_half(rng):
    v = rng.random((40, 40, 40)).astype(np.float32)
    labels = predict_volume(identity, v, 32, 0.5, 4, output="labels", progress=False)
    assert np.array_equal(labels, (v >= 0.5).astype(np.uint8))


def test_batches_have_a_fixed_shape_and_are_streamed():
    shapes, calls = [], []

    def model(batch):
        shapes.append(batch.shape)
        calls.append(1)
        return batch

    v = np.zeros((100, 100, 100), np.float32)
    n = len(sliding_windows(v.shape, 64, 0.5))
    predict_volume(model, v, 64, 0.5, batch_size=5, progress=False)
    assert set(shapes) == {(5, 64, 64, 64, 1)}
    assert len(calls) == math.ceil(n / 5)


def border_wrong_model(p, strength=0.5):
    ramp = np.abs(np.linspace(-1, 1, p))
    rz, ry, rx = np.ix_(ramp, ramp, ramp)
    error = (strength * np.maximum(np.maximum(rz, ry), rx) ** 4).astype(np.float32)

    def model(batch):
        return batch + error[None, ..., None]

    return model


def test_gaussian_blending_reduces_error_at_window_borders(rng):
    v = rng.random((128, 128, 128)).astype(np.float32)
    model = border_wrong_model(64)
    errors = {}
    for blend in ("none", "gaussian"):
        out = predict_volume(model, v, 64, 0.5, 8, blend, progress=False)[..., 0]
        errors[blend] = np.abs(out - v)
    # voxels within 2 of a window face (inner faces only)
    starts = window_starts(128, 64, 0.5)
    faces = sorted({b for s in starts for b in (s, s + 64) if 0 < b < 128})
    near = np.zeros(128, bool)
    for f in faces:
        near[max(0, f - 2) : f + 2] = True
    mask = near[:, None, None] | near[None, :, None] | near[None, None, :]
    assert errors["gaussian"][mask].mean() < 0.5 * errors["none"][mask].mean()
    assert errors["gaussian"].mean() < errors["none"].mean()


def test_gaussian_weights_centred_positive_and_sigma():
    for p in (64, 33, (32, 48, 64)):
        w = gaussian_weights(p)
        assert w.dtype == np.float32 and w.min() > 0 and np.isclose(w.max(), 1.0)
        assert np.allclose(w, w[::-1, ::-1, ::-1])
    w = gaussian_weights(64).astype(np.float64)
    profile = w[:, 32, 32] / w[:, 32, 32].max()  # index 31.5 is the centre for even sizes
    x = np.arange(64) - 31.5
    np.testing.assert_allclose(
        profile, np.exp(-0.5 * (x / 8) ** 2) / np.exp(-0.5 * (0.5 / 8) ** 2), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"volume": np.zeros((10, 10))}, "volume"),
        ({"volume": np.zeros((4, 4, 4, 4, 4))}, "volume"),
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": (32, -1, 32)}, "patch_size"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"batch_size": 0}, "batch_size"),
        ({"blend": "max"}, "blend"),
        ({"output": "logits"}, "output"),
    ],
)
def test_bad_arguments_raise_valueerror_naming_them(kwargs, match):
    args = {
        "model": identity,
        "volume": np.zeros((40, 40, 40), np.float32),
        "patch_size": 32,
        "progress": False,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        predict_volume(**args)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_volume_is_refused(bad):
    v = np.zeros((40, 40, 40), np.float32)
    v[30, 5, 7] = bad
    with pytest.raises(ValueError, match=r"volume: contains NaN or Inf.*\(30, 5, 7\)"):
        predict_volume(identity, v, 32, progress=False)


@pytest.mark.parametrize("model", [lambda b: b[:, :16], lambda b: b[..., 0], lambda b: b[:1]])
def test_model_output_of_wrong_shape_is_refused(model):
    with pytest.raises(ValueError, match="model output has shape"):
        predict_volume(model, np.zeros((40, 40, 40), np.float32), 32, batch_size=2, progress=False)


def test_memory_arithmetic_matches_the_issue():
    n, nbytes = patch_memory_bytes((512, 512, 512), 64, 0.5, n_classes=4)
    assert n == 3375 and 14.0e9 < nbytes < 14.3e9
