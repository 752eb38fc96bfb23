"""Issue 5: on-the-fly patch sampling, a short real training run, and resuming."""

import numpy as np
import pytest

from helpers.datasets import make_sandstone, spatial_split
from helpers.model import build_unet, iou_metrics, load_model
from helpers.preprocessing import normalize
from helpers.runs import commits
from helpers.training import (
    InterruptAfterEpoch,
    PatchSampler,
    SimulatedInterruption,
    augment_patch,
    read_log,
    train,
)


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


@pytest.fixture(scope="module")
def phantom():
    image, labels = make_sandstone((80, 64, 64), seed=0)
    image = normalize(image)
    train_idx, held = spatial_split(image.shape, 0.4, 0)
    return image, labels, train_idx, held


def samplers(phantom, steps, batch=4):
    image, labels, tr, held = phantom
    train_data = PatchSampler(image[tr], labels[tr], 32, batch, steps, n_classes=4, seed=0)
    val_data = PatchSampler(
        image[held], labels[held], 32, batch, 2, n_classes=4, augment=False, seed=1, resample_each_epoch=False
    )
    return train_data, val_data


def test_quick_training_lowers_loss_and_beats_an_untrained_model(phantom, tmp_path):
    train_data, val_data = samplers(phantom, steps=10)
    model = build_unet(4, patch_size=32)
    model.compile(loss="categorical_crossentropy", metrics=iou_metrics(4))
    untrained = model.evaluate(val_data, verbose=0, return_dict=True)["mean_iou"]
    history = train(model, train_data, val_data, epochs=5, run_dir=tmp_path, learning_rate=2e-3, verbose=0)
    assert history["epoch"] == [0, 1, 2, 3, 4]
    assert history["loss"][-1] < history["loss"][0]
    assert max(history["val_mean_iou"]) > untrained + 0.1
    best = load_model(tmp_path / "best.keras")
    assert best.output_shape == (None, 32, 32, 32, 4)


def test_training_resumes_after_an_interruption(phantom, tmp_path):
    train_data, val_data = samplers(phantom, steps=1, batch=1)
    with pytest.raises(SimulatedInterruption):
        train(
            build_unet(4, patch_size=32),
            train_data,
            val_data,
            4,
            tmp_path,
            callbacks=[InterruptAfterEpoch(2)],
            verbose=0,
        )
    assert read_log(tmp_path / "log.csv")["epoch"] == [0, 1]
    assert [c.epochs_done for c in commits(tmp_path)] == [2]

    started, iterations = [], []

    class Spy(InterruptAfterEpoch):
        def on_epoch_begin(self, epoch, logs=None):
            started.append(epoch)
            iterations.append(int(self.model.optimizer.iterations.numpy()))

    history = train(
        build_unet(4, patch_size=32), train_data, val_data, 4, tmp_path, callbacks=[Spy(99)], verbose=0
    )
    assert started == [2, 3]  # continued at epoch 3 (1-based)
    assert iterations == [2, 3]  # with the optimizer state (Adam's step count) restored
    assert history["epoch"] == [0, 1, 2, 3]  # each epoch exactly once
    assert not (tmp_path / "backup").exists()
    model = load_model(tmp_path / "best.keras")  # safe_mode=True
    assert model.output_shape[-1] == 4
    again = train(build_unet(4, patch_size=32), train_data, val_data, 4, tmp_path, verbose=0)
    assert again["epoch"] == [0, 1, 2, 3]  # a completed run is not retrained


def test_foreground_candidates_are_exact_below_the_limit_and_bounded_above(rng):
    from helpers.training import foreground_candidates

    labels = (rng.random((37, 20, 30)) < 0.3).astype(np.uint8)
    assert np.array_equal(foreground_candidates(labels, chunk=5), np.flatnonzero(labels))
    capped = foreground_candidates(labels, limit=1000, chunk=5)
    assert abs(len(capped) - 1000) <= 8 and np.all(labels.ravel()[capped] == 1)
    assert np.all(np.diff(capped) > 0)


@pytest.mark.slow
def test_best_model_file_holds_no_optimizer_state(tmp_path):
    import keras

    from helpers.training import inference_copy

    model = build_unet(4, patch_size=32)
    model.compile(optimizer=keras.optimizers.Adam(), loss="categorical_crossentropy")
    x = np.zeros((1, 32, 32, 32, 1), np.float32)
    model.fit(x, np.eye(4, dtype=np.float32)[np.zeros((1, 32, 32, 32), int)], verbose=0)
    model.save(tmp_path / "compiled.keras")
    inference_copy(model).save(tmp_path / "best.keras")
    compiled, best = (tmp_path / "compiled.keras").stat().st_size, (tmp_path / "best.keras").stat().st_size
    assert best < 0.4 * compiled and best < 200e6, (best, compiled)
    assert np.allclose(load_model(tmp_path / "best.keras").predict(x, verbose=0), model.predict(x, verbose=0))
