"""Issue 5: the U-Net, its head, losses, metrics, and safe loading."""

import keras
import numpy as np
import pytest

from helpers.inference import predict_volume
from helpers.model import (
    EncoderWeightsError,
    SegmentationLoss,
    build_unet,
    count_parameters,
    iou_metrics,
    load_model,
)


@pytest.fixture(scope="module")
def small_model():
    return build_unet(3, patch_size=32)


def test_resnet18_unet_has_42_6_million_parameters():
    model = build_unet(4)
    assert model.input_shape == (None, 64, 64, 64, 1)
    assert model.output_shape == (None, 64, 64, 64, 4)
    assert abs(count_parameters(model) - 42.6e6) < 0.5e6


def test_softmax_head_sums_to_one_and_sigmoid_for_binary(small_model):
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 32, 1)).astype(np.float32)
    y = small_model.predict(x, verbose=0)
    assert y.dtype == np.float32 and np.allclose(y.sum(-1), 1, atol=1e-4)
    binary = build_unet(1, patch_size=32)
    assert binary.layers[-1].get_config()["activation"] == "sigmoid"
    yb = binary.predict(x[:1], verbose=0)
    assert yb.shape == (1, 32, 32, 32, 1) and 0 <= yb.min() and yb.max() <= 1


def test_output_head_is_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_unet(4, patch_size=32)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    assert model.output.dtype == "float32"
    core = model.layers[-2]
    assert core.output.dtype == "float16"  # the library's own last layer would be float16


# ------------------------------------------------------- issue 22: bfloat16 on CPUs that have it

CPUINFO = "processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 avx2 {extra}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(
    ("vendor", "extra", "policy"),
    [
        ("GenuineIntel", "avx512f avx512_bf16 amx_bf16 amx_tile", "mixed_bfloat16"),  # Sapphire Rapids
        ("AuthenticAMD", "avx512f avx512_bf16", "mixed_bfloat16"),  # Zen 4
        ("AuthenticAMD", "fma", "float32"),  # Zen 3, this course's CI machine
        ("GenuineIntel", "avx512f avx512_vnni", "float32"),  # Cascade Lake: AVX-512 without BF16
    ],
)
def test_auto_precision_reads_the_cpu_flags(tmp_path, monkeypatch, vendor, extra, policy):
    from helpers import model as model_module
    from helpers.config import choose_precision, cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor=vendor, extra=extra))
    flags = cpu_flags(cpuinfo)
    assert "avx2" in flags and choose_precision(0, flags)[0] == policy
    assert choose_precision(1, flags)[0] == "mixed_float16"  # a GPU wins
    assert cpu_flags(tmp_path / "missing") == frozenset()  # macOS, Windows: float32
    monkeypatch.setattr(model_module, "cpu_flags", lambda: flags)
    monkeypatch.setattr(model_module, "gpu_count", lambda: 0)
    try:
        assert model_module.set_precision("auto") == policy
        assert keras.mixed_precision.global_policy().name == policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_under_bfloat16_the_head_the_loss_and_the_metrics_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_unet(3, patch_size=32)
        x = np.random.default_rng(0).normal(size=(1, 32, 32, 32, 1)).astype(np.float32)
        y = np.eye(3, dtype=np.float32)[np.random.default_rng(1).integers(0, 3, (1, 32, 32, 32))]
        pred = model(x)
        loss = SegmentationLoss("dice+ce")(y, pred)
        metric = iou_metrics(3)[0]
        metric.update_state(y, pred)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[-2].output.dtype == "bfloat16" and pred.dtype == "float32"
    assert loss.dtype == "float32" and np.isfinite(float(loss)) and 0 <= float(metric.result()) <= 1


def test_a_policy_is_named_or_refused():
    from helpers.model import set_precision

    try:
        assert set_precision("mixed_bfloat16") == "mixed_bfloat16"
        assert set_precision(False) == "float32"
        with pytest.raises(ValueError, match="mixed must be"):
            set_precision("bf16")
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_batchnorm_momentum_is_set():
    model = build_unet(2, patch_size=32, bn_momentum=0.8)
    bns = [la for la in model.layers[-2].layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(b.momentum == 0.8 for b in bns)


def test_pretrained_weights_offline_fail_at_once_with_a_clear_message(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://github.com/...: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(EncoderWeightsError, match="encoder_weights=None"):
        build_unet(4, patch_size=32, encoder_weights="imagenet")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_classes": 0}, "n_classes"),
        ({"patch_size": 48}, "multiple of 32"),
        ({"encoder_weights": "coco"}, "encoder_weights"),
    ],
)
def test_build_errors(kwargs, match):
    args = {"n_classes": 2, "patch_size": 32, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_unet(**args)


@pytest.mark.parametrize("kind", ["dice", "ce", "focal", "dice+ce", "dice+focal"])
def test_losses_prefer_the_right_answer(kind):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 8, 8, 8))
    y = np.eye(3, dtype=np.float32)[labels]
    good = 0.9 * y + 0.1 / 3
    bad = 0.9 * np.roll(y, 1, axis=-1) + 0.1 / 3
    loss = SegmentationLoss(kind)
    assert float(loss(y, good)) < float(loss(y, bad))


def test_dice_loss_is_zero_for_perfect_prediction_and_unknown_loss_fails():
    y = np.eye(2, dtype=np.float32)[np.random.default_rng(0).integers(0, 2, (1, 4, 4, 4))]
    assert float(SegmentationLoss("dice")(y, y)) < 1e-4
    assert float(SegmentationLoss("bce")(y[..., 1:], y[..., 1:])) < 1e-4
    with pytest.raises(ValueError, match="loss must be one of"):
        SegmentationLoss("hinge")


def test_iou_metrics_names():
    names = [m.name for m in iou_metrics(3, ("pore", "clay", "grey matter"))]
    assert names == ["mean_iou", "iou_pore", "iou_clay", "iou_grey_matter"]


def test_the_checkpoint_metric_averages_the_foreground_classes_only():
    truth = np.eye(3, dtype=np.float32)[np.array([[0, 0, 0, 1, 2, 2]])]
    pred = np.eye(3, dtype=np.float32)[np.array([[0, 1, 0, 1, 2, 2]])]  # one background voxel called 1
    metrics = {m.name: m for m in iou_metrics(3)}
    for m in metrics.values():
        m.update_state(truth, pred)
    assert float(metrics["iou_0"].result()) == pytest.approx(2 / 3)
    assert float(metrics["mean_iou"].result()) == pytest.approx((1 / 2 + 1) / 2)


def test_saved_model_loads_in_safe_mode_and_predicts_a_volume(tmp_path, small_model):
    path = tmp_path / "m.keras"
    small_model.save(path)
    loaded = load_model(path)
    v = np.random.default_rng(1).normal(size=(40, 33, 50)).astype(np.float32)
    a = predict_volume(loaded, v, 32, 0.5, 2, output="labels", progress=False)
    b = predict_volume(small_model, v, 32, 0.5, 2, output="labels", progress=False)
    assert a.shape == v.shape and np.array_equal(a, b)


def test_anisotropic_patch_builds_the_same_network():
    model = build_unet(4, patch_size=(32, 64, 96))
    assert model.input_shape == (None, 32, 64, 96, 1) and model.output_shape == (None, 32, 64, 96, 4)
    assert abs(count_parameters(model) - 42.6e6) < 0.5e6
    with pytest.raises(ValueError, match="multiple of 32"):
        build_unet(4, patch_size=(32, 48, 64))


@pytest.mark.parametrize(
    ("shape", "side", "patch"),
    [
        ((20, 256, 256), 64, (32, 128, 64)),  # a thin CT: fewer slices, more in-plane voxels
        ((300, 300, 300), 64, (64, 64, 64)),
        ((33, 48, 48), 32, (32, 32, 32)),
        ((40, 100, 30), 64, (64, 128, 32)),
    ],
)
def test_default_patch_follows_the_shape(shape, side, patch):
    from helpers.planning import default_patch_size

    assert default_patch_size(shape, side) == patch
    assert np.prod(patch) <= side**3 and all(p % 32 == 0 for p in patch)


def test_the_head_is_a_3x3x3_convolution_with_433_parameters_per_class():
    from helpers.model import head_layer

    for n in (3, 4):
        head = head_layer(build_unet(n, patch_size=32))
        assert tuple(head.kernel.shape) == (3, 3, 3, 16, n)
        assert head.count_params() == (16 * 27 + 1) * n
