"""Cheap models for inference tests; ``"stub_models:factory"`` strings load them on Dask workers."""

import os
import time

import numpy as np


def three_class(batch):
    x = batch[..., :1]
    return np.concatenate([x, 1 - x, np.sin(7 * x) ** 2], axis=-1)


def ramp_model(batch):
    """Not equivariant under flips: adds a ramp along every patch axis."""
    p = batch.shape[1:4]
    ramp = sum(np.linspace(0, 1, n).reshape([-1 if i == a else 1 for i in range(3)]) for a, n in enumerate(p))
    x = batch[..., :1] + ramp[None, ..., None].astype(np.float32)
    return np.concatenate([x, 2 - x, x * x], axis=-1)


def ramp():
    return ramp_model


def slow_ramp():
    """ramp_model that sleeps STUB_SLEEP_S seconds per batch, to give a fault test time to strike."""
    delay = float(os.environ.get("STUB_SLEEP_S", "0.05"))

    def model(batch):
        time.sleep(delay)
        return ramp_model(batch)

    return model


def small_unet_stand_in(n_classes, patch_size, in_channels=1, **_):
    """A two-layer Keras model with the U-Net's inputs and outputs, for tests of what surrounds
    the network (run folders, samplers, channels, the predict command), not of the network:
    building and tracing the 42.6 M-parameter U-Net costs 15-30 s a test on 2 cores."""
    import keras

    patch = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
    inputs = keras.Input((*patch, in_channels))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Conv3D(n_classes, 1, activation="softmax", dtype="float32")(x))


def ramp_logging_threads():
    """ramp_model, after appending this worker's pid and TensorFlow thread settings to the
    file named by STUB_THREADS_LOG: what the worker process was started with."""
    with open(os.environ["STUB_THREADS_LOG"], "a") as log:
        log.write(f"{os.getpid()} {os.environ.get('TF_NUM_INTRAOP_THREADS')} "
                  f"{os.environ.get('TF_NUM_INTEROP_THREADS')}\n")
    return ramp_model
