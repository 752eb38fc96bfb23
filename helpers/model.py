"""The 3-D U-Net (segmentation-models-3D, ResNet-18 3-D encoder), its losses and metrics.

Keras 3 APIs only (``keras``, ``keras.ops``), so the helpers run under the
TensorFlow backend (the default) and also under JAX or PyTorch. TensorFlow-only
features (``tf.distribute``) live in :func:`distribution_strategy`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from helpers.config import LOSSES, POLICIES, choose_precision, cpu_flags  # noqa: E402
from helpers.patches import as_patch_shape  # noqa: E402
from helpers.planning import default_patch_size  # noqa: E402, F401  (its old home)


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights were asked for but cannot be downloaded."""


def gpu_count() -> int:
    """Number of GPUs the current Keras backend can use."""
    backend = keras.config.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return len(tf.config.list_physical_devices("GPU"))
        if backend == "torch":
            import torch

            return torch.cuda.device_count()
        if backend == "jax":
            import jax

            return sum(d.platform == "gpu" for d in jax.devices())
    except Exception:  # a backend without GPU support raises instead of returning []
        return 0
    return 0


def set_precision(mixed: bool | str = "auto") -> str:
    """Set the global dtype policy and return its name. Call it before building the model.

    ``"auto"`` follows :func:`helpers.config.choose_precision` for this machine (the GPUs
    Keras sees, the CPU's flags); a policy name (:data:`helpers.config.POLICIES`) sets it;
    True means ``mixed_float16`` and False ``float32``. The U-Net's softmax head, and so
    the loss, stay float32 under every policy.
    """
    if mixed == "auto":
        name = choose_precision(gpu_count(), cpu_flags())[0]
    elif isinstance(mixed, bool):
        name = "mixed_float16" if mixed else "float32"
    elif mixed in POLICIES:
        name = mixed
    else:
        raise ValueError(f"mixed must be 'auto', True, False or one of {POLICIES}, got {mixed!r}")
    keras.mixed_precision.set_global_policy(name)
    return name


def precision_reason(policy: str) -> str:
    """Why ``policy`` is in use on this machine, in words (for ``training.json`` and the summary)."""
    auto, why = choose_precision(gpu_count(), cpu_flags())
    return f"auto: {why}" if policy == auto else "set explicitly"


@functools.lru_cache(maxsize=1)
def distribution_strategy() -> Any | None:
    """A ``tf.distribute.MirroredStrategy`` when TensorFlow sees more than one GPU, else None.

    TensorFlow-only. Build and compile the model inside :func:`strategy_scope`
    and feed batches of ``per-replica batch x strategy.num_replicas_in_sync``.
    Cached: the model must be built and compiled under the same strategy object.
    """
    if keras.config.backend() != "tensorflow" or gpu_count() < 2:
        return None
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


@contextlib.contextmanager
def strategy_scope() -> Iterator[int]:
    """Context manager: the MirroredStrategy scope if there is one; yields the replica count."""
    strategy = distribution_strategy()
    if strategy is None:
        yield 1
    else:
        with strategy.scope():
            yield int(strategy.num_replicas_in_sync)


def replicas() -> int:
    """Model copies that train in parallel (GPUs under a MirroredStrategy), 1 without one.

    Keras splits each batch over them, so feed batches of per-replica batch x replicas.
    """
    strategy = distribution_strategy()
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def build_unet(
    n_classes: int,
    in_channels: int = 1,
    patch_size: int | tuple[int, int, int] = 64,
    backbone: str = "resnet18",
    encoder_weights: str | None = None,
    bn_momentum: float | None = 0.9,
) -> keras.Model:
    """A segmentation-models-3D U-Net with a float32 output head.

    Parameters
    ----------
    n_classes : int
        1 gives a sigmoid output (binary); 2 or more a softmax over classes.
    in_channels : int
        Channels of the input volume (1 for CT/MRI grey values).
    patch_size : int or 3 ints
        Input size in voxels, cubic or (Z, Y, X); each side a multiple of 32 for
        the 5 down-samplings, e.g. (32, 64, 96) for a thin scan.
    backbone : str
        Encoder name; "resnet18" gives about 42.6 M parameters with 4 classes.
    encoder_weights : None or "imagenet"
        Pretrained encoder weights need a download, so they are opt-in. They were
        trained on 3-channel input: with ``in_channels=1`` the grey channel is
        repeated three times inside the model, so you still feed grey patches.
    bn_momentum : float or None
        Momentum of the BatchNormalization moving statistics. The library's 0.99
        needs hundreds of steps before inference-mode statistics are usable;
        0.9 lets short CPU runs validate meaningfully. None keeps 0.99.

    Returns
    -------
    keras.Model
        Input (pz, py, px, in_channels) -> (pz, py, px, n_classes),
        float32 probabilities even under a ``mixed_float16`` policy.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    patch = as_patch_shape(patch_size)
    if any(p % 32 for p in patch):
        raise ValueError(f"patch_size must be a multiple of 32 on each axis (5 poolings), got {patch_size}")
    if encoder_weights not in (None, "imagenet"):
        raise ValueError(f"encoder_weights must be None or 'imagenet', got {encoder_weights!r}")
    import segmentation_models_3D as sm

    enc_channels = 3 if encoder_weights == "imagenet" else in_channels
    if encoder_weights == "imagenet" and in_channels not in (1, 3):
        raise ValueError(f"pretrained weights take 1 or 3 input channels, got {in_channels}")
    try:
        core = sm.Unet(
            backbone,
            input_shape=(*patch, enc_channels),
            classes=n_classes,
            activation="linear",
            encoder_weights=encoder_weights,
        )
    except Exception as err:
        if encoder_weights and ("URL fetch failure" in str(err) or isinstance(err, OSError)):
            raise EncoderWeightsError(
                "encoder_weights='imagenet' needs to download the pretrained encoder and no "
                "network is reachable; use encoder_weights=None (train from scratch) or copy the "
                "weights file into ~/.keras/models/"
            ) from err
        raise
    if bn_momentum is not None:
        for layer in core.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    inputs = keras.Input((*patch, in_channels), name="image")
    x = inputs
    if enc_channels != in_channels:
        x = keras.layers.Concatenate(axis=-1, name="grey_to_rgb")([inputs] * 3)
    logits = core(x)
    head = "sigmoid" if n_classes == 1 else "softmax"
    outputs = keras.layers.Activation(head, dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"unet3d_{backbone}")


def head_layer(model: keras.Model) -> keras.layers.Layer:
    """The library's last convolution (``final_conv``), the only layer whose size depends on the classes."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer.get_layer("final_conv")
    return model.get_layer("final_conv")


def count_parameters(model: keras.Model, trainable: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    weights = model.trainable_weights if trainable else model.weights
    total = 0
    for w in weights:
        n = 1
        for d in w.shape:
            n *= int(d)
        total += n
    return total


def _dice_loss(y_true: Any, y_pred: Any, smooth: float = 1e-5) -> Any:
    axes = tuple(range(len(y_pred.shape) - 1))  # batch and space: one Dice per class
    inter = ops.sum(y_true * y_pred, axis=axes)
    denom = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - ops.mean((2.0 * inter + smooth) / (denom + smooth))


@keras.saving.register_keras_serializable(package="helpers")
class SegmentationLoss(keras.losses.Loss):
    """Dice, cross-entropy, focal, or a sum of Dice and one of the others, by name.

    ``y_true`` is one-hot (B, Z, Y, X, n_classes) float32 (for one sigmoid
    channel: 0/1), ``y_pred`` the model's probabilities of the same shape.
    Names: "dice", "ce" (categorical), "bce" (binary), "focal", "dice+ce",
    "dice+bce", "dice+focal".
    """

    def __init__(self, kind: str = "dice+ce", name: str | None = None, **kwargs: Any) -> None:
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        super().__init__(name=name or kind.replace("+", "_"), **kwargs)
        self.kind = kind

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, y_pred.dtype)
        total = 0.0
        for part in self.kind.split("+"):
            if part == "dice":
                total = total + _dice_loss(y_true, y_pred)
            elif part == "ce":
                total = total + ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))
            elif part == "bce":
                total = total + ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
            else:
                total = total + ops.mean(keras.losses.categorical_focal_crossentropy(y_true, y_pred))
        return total

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind}


def iou_metrics(n_classes: int, class_names: tuple[str, ...] | None = None) -> list[Any]:
    """Keras IoU (Jaccard) metrics on argmax predictions: ``mean_iou`` and one per class.

    ``mean_iou``, which picks the checkpoint, is the mean over the foreground classes
    1..n_classes-1 (class 0 has its own ``iou_<name>`` but is not averaged), as the
    test scores of :mod:`helpers.metrics` are.
    """
    if n_classes == 1:
        return [keras.metrics.BinaryIoU(target_class_ids=[0, 1], threshold=0.5, name="mean_iou")]
    names = class_names or tuple(str(c) for c in range(n_classes))
    safe = ["".join(ch if ch.isalnum() else "_" for ch in n) for n in names]
    foreground = list(range(1, n_classes))
    return [keras.metrics.OneHotIoU(n_classes, target_class_ids=foreground, name="mean_iou")] + [
        keras.metrics.OneHotIoU(n_classes, target_class_ids=[c], name=f"iou_{safe[c]}")
        for c in range(n_classes)
    ]


class ModelFileError(ValueError):
    """A model file that cannot be loaded; the message names the file and the reason."""


MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a saved ``.keras`` model for inference with ``safe_mode=True`` (no arbitrary code).

    Raises
    ------
    ModelFileError
        A missing file, an extension other than .keras/.h5, or a file that is not a
        Keras model (corrupt, truncated, or another format); the message names the file.
    """
    import zipfile

    if not isinstance(path, (str, os.PathLike)):
        raise ModelFileError(f"path must be a model file path, got {type(path).__name__} {path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        reason = "is a folder, not a model file" if os.path.isdir(path) else "no such file"
        raise ModelFileError(f"{path}: {reason}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelFileError(f"{path}: unsupported extension {suffix!r}; expected one of {MODEL_SUFFIXES}")
    with open(path, "rb") as f:
        magic = f.read(8)
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a .keras archive (corrupt or truncated model file)")
    if suffix != ".keras" and magic != b"\x89HDF\r\n\x1a\n":
        raise ModelFileError(f"{path}: not an HDF5 file (corrupt or truncated model file)")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises many types for damaged or unsafe files
        raise ModelFileError(
            f"{path}: cannot be loaded as a Keras model ({type(err).__name__}: {err})"
        ) from err
