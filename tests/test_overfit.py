"""Issue 21: the overfit-one-batch check of 04, and that it leaves the model as it was."""

import keras
import numpy as np
import pytest

from helpers.overfit import batch_with_most_classes, classes_present, overfit_one_batch
from helpers.sampling import PatchSampler


def small_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 16, 1))
    x = keras.layers.Conv3D(4, 3, padding="same")(inputs)
    x = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(x))
    model = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
    labels = np.digitize(x[..., 0], [-0.5, 0.5])
    return x, np.eye(3, dtype=np.float32)[labels]


def test_the_loss_falls_on_a_repeated_batch_and_each_step_reports_its_own_loss(batch):
    x, y = batch
    model = small_model()
    losses = overfit_one_batch(model, x, y, steps=20)
    assert len(losses) == 20 and losses[-1] < 0.85 * losses[0]
    # the same steps by hand: the loss before each update (Keras logs a running mean instead)
    by_hand = small_model()
    by_hand.set_weights(model.get_weights())
    expected = [float(by_hand.train_on_batch(x, y)) for _ in range(4)]
    assert np.allclose(losses[:4], expected, rtol=1e-4)


def test_after_the_check_training_goes_exactly_as_without_it(batch):
    x, y = batch
    checked, plain = small_model(), small_model()
    assert all(np.array_equal(a, b) for a, b in zip(checked.get_weights(), plain.get_weights(), strict=True))
    before = [w.copy() for w in checked.get_weights()]
    overfit_one_batch(checked, x, y, steps=5)
    after = checked.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))  # moving statistics too
    assert int(checked.optimizer.iterations.numpy()) == 0
    for model in (checked, plain):
        model.fit(x, y, batch_size=2, epochs=3, verbose=0)
    for a, b in zip(checked.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_trained_optimizer_is_put_back_too_and_a_fresh_one_is_not_copied(batch):
    """Adam's moments after training are copied and restored; a fresh optimizer's zero moments
    are restored as zeros without a copy (340 MB for the U-Net, issue 34's 2 GB Binder)."""
    from helpers.overfit import _copy_unless_zero

    x, y = batch
    model = small_model()
    model.optimizer.build(model.trainable_variables)
    fresh = [_copy_unless_zero(v) for v in model.optimizer.variables]
    moments = [v for v in model.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert moments and all(_copy_unless_zero(v) is None for v in moments)
    assert sum(value is not None for value in fresh) < len(moments)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0)
    state = [v.numpy().copy() for v in model.optimizer.variables]
    weights = [w.copy() for w in model.get_weights()]
    overfit_one_batch(model, x, y, steps=3)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(state, model.optimizer.variables, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))


def test_a_batch_with_every_class_is_chosen_without_moving_the_sampler():
    labels = np.zeros((32, 32, 32), np.uint8)
    labels[10:12, 10:12, 10:12] = 3  # a rare class: few batches of one patch contain it
    labels[:, :, 20:] = 1
    image = labels.astype(np.float32)
    sampler = PatchSampler(image, labels, 16, 1, 4, n_classes=4, foreground_fraction=0.0, seed=0)
    epoch = sampler.epoch
    x, y = batch_with_most_classes(sampler, tries=64)
    present = y.reshape(-1, 4).any(axis=0)
    assert present[[0, 1, 3]].all() and classes_present(y) == 3 and x.shape == (1, 16, 16, 16, 1)
    assert sampler.epoch == epoch


@pytest.mark.parametrize(
    ("steps", "message"),
    [(0, "steps must be a positive"), (-3, "steps must be a positive")],
)
def test_bad_step_counts_are_refused(batch, steps, message):
    with pytest.raises(ValueError, match=message):
        overfit_one_batch(small_model(), *batch, steps=steps)


def test_an_uncompiled_model_or_a_mismatched_batch_is_refused(batch):
    x, y = batch
    model = small_model()
    with pytest.raises(ValueError, match="must be one batch"):
        overfit_one_batch(model, x, y[:1], steps=2)
    bare = keras.Model(model.inputs, model.outputs)
    with pytest.raises(ValueError, match="must be compiled"):
        overfit_one_batch(bare, x, y, steps=2)


def test_docstring_examples_hold():
    import doctest

    import helpers.overfit

    assert doctest.testmod(helpers.overfit).failed == 0
