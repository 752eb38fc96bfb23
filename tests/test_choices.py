"""Issue 32: choices made on validation survive the test part; the baseline is the stronger of two."""

import json

import numpy as np

from helpers.choices import MIN_GAIN, decide, explain_difference


def _scored(per_case_mean, per_case_class=None, settings=None):
    """A scored result as helpers.evaluation.score_settings gives it, for the fields decide reads."""
    per_case = {}
    for k, m in enumerate(per_case_mean):
        iou = [0.9, m, m, m] if per_case_class is None else [0.9, *per_case_class[k]]
        per_case[f"c{k}"] = {"mean_iou": m, "iou": iou}
    mean = float(np.mean(per_case_mean))
    return {
        "unet": {"per_case": per_case, "mean_iou": mean, "iou": [0.9, mean, mean, mean]},
        "settings": settings,
    }


DEFAULT = {"overlap": 0.5, "tta": None, "keep_largest": []}


def test_an_option_is_kept_only_above_the_margin():
    """06 once kept the largest-component rule for +0.0004 on validation: noise."""
    scored = {
        "default": _scored([0.8761], settings=DEFAULT),
        "mirroring": _scored([0.8761 + 0.0004]),
        "overlap 0": _scored([0.8761 + 0.02]),
    }
    options = {"mirroring": {"key": "tta", "value": "mirror"}, "overlap 0": {"key": "overlap", "value": 0.0}}
    out = decide(scored, options)
    assert not out["options"]["mirroring"]["kept"] and out["options"]["overlap 0"]["kept"]
    assert out["chosen"] == {"overlap": 0.0, "tta": None, "keep_largest": []}
    assert out["options"]["mirroring"]["margin"] == MIN_GAIN  # one validation case: the fixed minimum


def test_the_margin_grows_with_the_spread_of_per_case_gains():
    default = _scored([0.80, 0.80, 0.80, 0.80], settings=DEFAULT)
    noisy = _scored([0.85, 0.75, 0.86, 0.76])  # +0.005 on average, +-0.05 per case
    out = decide({"default": default, "mirroring": noisy}, {"mirroring": {"key": "tta", "value": "mirror"}})
    option = out["options"]["mirroring"]
    assert option["margin"] > 0.02 and not option["kept"]


def test_the_largest_component_rule_is_decided_per_class():
    default = _scored([0.8], [[0.8, 0.7, 0.9]], settings=DEFAULT)
    scored = {
        "default": default,
        "largest: a": _scored([0.8], [[0.85, 0.7, 0.9]]),  # class 1 gains
        "largest: b": _scored([0.8], [[0.8, 0.4, 0.9]]),  # class 2 loses a piece
        "largest: c": _scored([0.8], [[0.8, 0.7, 0.9001]]),  # class 3: noise
    }
    options = {
        f"largest: {n}": {"key": "keep_largest", "value": [c], "class": c} for c, n in enumerate("abc", 1)
    }
    assert decide(scored, options)["chosen"]["keep_largest"] == [1]


def test_a_test_difference_above_the_margin_is_explained_naming_class_and_cause():
    classes = ["bg", "grey", "white"]
    default = {"classes": classes, "unet": {"mean_iou": 0.85, "iou": [0.9, 0.85, 0.85]}}
    chosen = {"classes": classes, "unet": {"mean_iou": 0.65, "iou": [0.9, 0.85, 0.45]}}
    text = explain_difference(default, chosen, {"overlap": 0.5, "tta": None, "keep_largest": [2]}, 0.005)
    assert "-0.200" in text and "white" in text and "largest-component rule" in text
    same = explain_difference(default, default, DEFAULT, 0.005)
    assert "within the margin" in same
    better = {"classes": classes, "unet": {"mean_iou": 0.87, "iou": [0.9, 0.86, 0.88]}}
    text = explain_difference(default, better, {"overlap": 0.5, "tta": "mirror", "keep_largest": []}, 0.005)
    assert "raise" in text and "+0.020" in text and "test-time mirroring" in text and "holds" in text
    assert "white (IoU +0.030)" in text and "fail" not in text  # 06 once said a gain "can fail"


class _CountingModel:
    """A stand-in model: the image's sign as class 1 or 0 of 4 classes, counting its calls."""

    input_shape = (None, 32, 32, 32, 1)

    def __init__(self):
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        x = np.asarray(batch)[..., :1]
        return np.concatenate([x < 0, x >= 0, 0 * x, 0 * x], axis=-1).astype(np.float32)


def test_settings_that_differ_only_in_post_processing_share_one_prediction_and_one_read(tmp_path):
    from helpers.config import get_params
    from helpers.evaluation import score_settings, score_test
    from helpers.experiment import prepare

    params = get_params("quick", "sandstone", output_dir=str(tmp_path))
    ds = prepare(params)
    one = _CountingModel()
    score_test(one, ds, params, "val", baseline=False, progress=False)
    two = _CountingModel()
    reads = ds.reads["val"]
    scored = score_settings(two, ds, params, "val", {"a": DEFAULT, "b": {**DEFAULT, "keep_largest": [1]}})
    assert two.calls == one.calls and ds.reads["val"] == reads + 1
    assert (
        scored["a"]["grid"] == "native" and scored["a"]["unet"]["mean_iou"] != scored["b"]["unet"]["mean_iou"]
    )


def test_summary_gain_is_against_the_stronger_baseline(tmp_path):
    from helpers.results import write_summary

    def scores(mean):
        return {
            "iou": [0.5, mean, mean],
            "dice": [0.6, mean, mean],
            "hd95": [1.0, 1.0, 1.0],
            "mean_iou": mean,
        }

    ev = {
        "part": "test",
        "classes": ["a", "b", "c"],
        "unet": scores(0.725),
        "baseline": scores(0.210),
        "fitted": scores(0.368),
        "cases": {"core2": [48, 48, 48]},
        "grid": "native",
        "split": "by case: train core3, core4, core5; val core1; test core2",
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "sandstone.json").write_text(json.dumps({"evaluation": ev, "profile": "quick"}))
    text = write_summary(tmp_path, "quick", [], 1.0).read_text()
    assert "the stronger baseline (fitted thresholds), mean test IoU: **+0.357**" in text
    assert "| multi-Otsu IoU | fitted thresholds IoU | U-Net IoU" in text
    assert "Split: by case: train core3, core4, core5; val core1; test core2." in text
