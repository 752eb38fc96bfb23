import numpy as np
import pytest

from helpers.metrics import confusion_matrix, dice_per_class, hd95, iou_per_class, mean_dice, mean_iou
from helpers.preprocessing import normalize, one_hot, percentile_clip, remap_labels, zscore


def test_perfect_prediction():
    t = np.array([0, 1, 2, 2, 1])
    assert np.allclose(iou_per_class(t, t, 3), 1) and mean_iou(t, t, 3) == 1
    assert np.allclose(dice_per_class(t, t, 3), 1)


def test_disjoint_masks_score_zero():
    t = np.array([1, 1, 0, 0])
    p = np.array([0, 0, 1, 1])
    assert np.allclose(iou_per_class(t, p, 2), 0) and mean_dice(t, p, 2) == 0


def test_hand_computed_case():
    t = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 2, 2])
    cm = confusion_matrix(t, p, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    np.testing.assert_allclose(iou_per_class(t, p, 3), [1 / 2, 2 / 4, 1 / 2])
    np.testing.assert_allclose(dice_per_class(t, p, 3), [2 / 3, 4 / 6, 2 / 3])


def test_class_absent_from_truth_and_prediction_is_nan_and_ignored():
    t = np.array([0, 0, 1, 1])
    iou = iou_per_class(t, t, 4)
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert mean_iou(t, t, 4) == 1.0


def test_class_in_prediction_only_scores_zero():
    t = np.array([0, 0, 0, 1])
    p = np.array([0, 0, 2, 1])
    assert iou_per_class(t, p, 3)[2] == 0.0
    assert mean_iou(t, p, 3) == pytest.approx((1 + 0) / 2)  # class 0 (2/3) is reported, not averaged


def test_headline_means_are_over_foreground_classes_and_class_0_is_still_reported():
    from helpers.metrics import case_scores, evaluate, scores_table

    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:4, 1:4, 1:4], truth[4:, 4:, 4:] = 1, 2
    pred = truth.copy()
    pred[0, 0, :3] = 1  # three background voxels called class 1
    scores = evaluate(truth, pred, ("background", "liver", "spleen"))
    assert scores["iou"][0] < 1 and scores["iou"][2] == 1.0
    assert scores["mean_iou"] == pytest.approx((27 / 30 + 1) / 2)  # background left out
    assert case_scores(truth, pred, ("background", "liver", "spleen"), (1, 1, 1))["mean_hd95"] is not None
    table = scores_table({"U-Net": scores})
    assert (
        "| background | 0.983 |" in table  # 178 of 181 background voxels kept
        and f"| **mean** (classes 1-2) | **{(27 / 30 + 1) / 2:.3f}** |" in table
    )


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shape"):
        mean_iou(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(ValueError, match="outside"):
        mean_iou(np.array([0, 5]), np.array([0, 1]), 2)


def test_normalize_and_zscore(rng):
    x = rng.normal(50, 10, (20, 20, 20)).astype(np.float32)
    x[0, 0, 0] = 1e6
    n = normalize(x)
    assert n.dtype == np.float32 and abs(n.mean()) < 1e-3 and abs(n.std() - 1) < 1e-3
    assert n.max() < 10
    assert percentile_clip(x).max() < 1e6
    masked = zscore(x, mask=x < 1e5)
    assert abs(masked[x < 1e5].mean()) < 1e-3


def test_remap_labels_and_one_hot():
    lab = np.array([[[1, 2], [3, 4]]])
    out = remap_labels(lab, {1: 0, 2: 1, 3: 2, 4: 3})
    assert out.tolist() == [[[0, 1], [2, 3]]] and out.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\[4\]"):
        remap_labels(lab, {1: 0, 2: 1, 3: 2})
    oh = one_hot(out, 4)
    assert oh.shape == (1, 2, 2, 4) and oh.dtype == np.float32 and np.all(oh.sum(-1) == 1)


def test_hd95_is_in_millimetres_and_nan_for_an_empty_mask():
    from helpers.metrics import hd95

    a = np.zeros((6, 5, 5), bool)
    b = a.copy()
    a[0, 2, 2], b[4, 2, 2] = True, True  # one voxel each, 4 slices apart
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(8.0)
    assert hd95(a, a, spacing=(2.0, 1.0, 1.0)) == 0.0
    assert np.isinf(hd95(a, np.zeros_like(a)))  # a structure missed entirely
    assert np.isnan(hd95(np.zeros_like(a), np.zeros_like(a)))  # absent from both: n/a


def test_hd95_is_monais_larger_directed_percentile_not_the_pooled_one():
    from helpers.metrics import hd95

    truth = np.zeros((1, 1, 30), bool)
    truth[0, 0, :20] = True  # a line one voxel thick: every voxel is surface
    pred = truth.copy()
    pred[0, 0, [25, 26]] = True  # two stray voxels, 6 and 7 mm from the truth
    # pred to truth: (0 x 20, 6, 7), the 95th percentile sits at 19.95 of 21 steps: 0.95 * 6 = 5.7;
    # truth to pred: all 0. MONAI takes the larger, 5.7; pooling the 42 distances would give 0.
    assert hd95(truth, pred) == pytest.approx(5.7)
    assert hd95(pred, truth) == pytest.approx(5.7)


def test_case_scores_and_means_over_cases_leave_absent_classes_out():
    from helpers.metrics import case_scores, count_missed, mean_over_cases

    truth = np.zeros((4, 4, 4), np.uint8)
    truth[:2] = 1
    one = case_scores(truth, truth, ("bg", "fg", "rare"), (1, 1, 1))
    assert one["iou"] == [1.0, 1.0, None] and one["hd95"] == [0.0, 0.0, None]
    other = case_scores(truth, np.zeros_like(truth), ("bg", "fg", "rare"), (1, 1, 1))
    assert other["iou"][1] == 0.0 and other["dice"][1] == 0.0 and other["hd95"][1] is None
    assert other["missed"] == ["fg"] and other["spurious"] == [] and one["missed"] == []
    assert count_missed({"a": one, "b": other}) == {"b": ["fg"]}  # counted, not silently dropped
    means = mean_over_cases({"a": one, "b": other}, "iou")
    assert means[1] == 0.5 and means[2] is None


def full_volume_hd95(truth, pred, spacing):
    """The whole-volume computation hd95 did before it cropped: the reference."""
    from scipy import ndimage as ndi

    structure = ndi.generate_binary_structure(3, 1)
    surface_t = truth & ~ndi.binary_erosion(truth, structure, border_value=0)
    surface_p = pred & ~ndi.binary_erosion(pred, structure, border_value=0)
    to_t = ndi.distance_transform_edt(~surface_t, sampling=spacing)
    to_p = ndi.distance_transform_edt(~surface_p, sampling=spacing)
    return float(max(np.percentile(to_t[surface_p], 95), np.percentile(to_p[surface_t], 95)))


def test_hd95_in_the_joint_box_equals_the_whole_volume_and_needs_little_memory(rng):
    """Issue 20: a structure's HD95 in a 512 x 512 x 400 CT took about 6 GB (61 B a voxel)."""
    import tracemalloc

    shape, spacing = (60, 70, 80), (2.0, 0.7, 0.9)
    for trial in range(4):
        truth, pred = np.zeros(shape, bool), np.zeros(shape, bool)
        z, y, x = rng.integers(0, 50, 3)
        truth[z : z + 9, y : y + 12, x : x + 7] = True
        pred[z + 1 : z + 10, y : y + 11, x + 1 : x + 8] = True
        pred[rng.integers(0, 60), rng.integers(0, 70), rng.integers(0, 80)] = True  # a stray voxel
        if trial == 3:
            truth[0, :5, :5] = pred[-1, -5:, -5:] = True  # masks on the array's faces
        assert hd95(truth, pred, spacing) == pytest.approx(full_volume_hd95(truth, pred, spacing))
    big = np.zeros((200, 200, 200), bool)
    a, b = big.copy(), big.copy()
    a[90:100, 90:100, 90:100] = True
    b[92:101, 90:100, 91:100] = True
    tracemalloc.start()
    hd95(a, b, (1.0, 1.0, 1.0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 2**20, peak  # the whole volume: 8 M voxels x 61 B = 490 MB


@pytest.mark.parametrize("n_classes", [2, 13, 300])
def test_confusion_matrix_counts_in_blocks_with_small_codes(rng, monkeypatch, n_classes):
    import tracemalloc

    import helpers.metrics

    truth = rng.integers(0, n_classes, (17, 19, 23)).astype(np.uint16)
    pred = rng.integers(0, n_classes, (17, 19, 23)).astype(np.uint16)
    reference = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(reference, (truth.ravel(), pred.ravel()), 1)
    monkeypatch.setattr(helpers.metrics, "CONFUSION_BLOCK", 1000)  # several blocks, a partial last one
    assert np.array_equal(confusion_matrix(truth, pred, n_classes), reference)
    monkeypatch.undo()
    big = rng.integers(0, 4, (160, 160, 160)).astype(np.uint8)
    tracemalloc.start()
    confusion_matrix(big, big[::-1], 4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 60 * 2**20, peak  # int64 codes of 4 M voxels alone: 65 MB, and a copy of each map


def test_hd95_of_a_background_that_fills_the_scan_needs_its_surfaces_not_its_volume():
    """Issue 20: HD95 for every class includes the background, whose box is the whole scan:
    two whole-volume distance transforms took 6.7 GB at 512 x 512 x 400."""
    import tracemalloc

    shape, spacing = (200, 200, 200), (2.0, 0.8, 0.8)
    truth = np.ones(shape, bool)
    truth[40:90, 50:100, 60:120] = False  # an organ: the background's inner surface
    pred = np.ones(shape, bool)
    pred[43:92, 50:104, 58:120] = False
    pred[150:152, 10:12, 10:12] = False  # a stray hole far from the organ
    tracemalloc.start()
    got = hd95(truth, pred, spacing)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == pytest.approx(full_volume_hd95(truth, pred, spacing))
    assert peak < truth.size * 8, f"{peak / 2**20:.0f} MB for a {truth.size / 2**20:.0f} M-voxel scan"
