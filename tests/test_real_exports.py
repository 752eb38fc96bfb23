"""Issue 31: data as real exports ship it. Float-stored labels go through one reader on every path;
nnU-Net v2's dataset.json needs only its four keys; the plan follows the data; figures take channels.
"""

import json
import shutil

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from helpers.datasets import DatasetError, make_cores_dataset, open_dataset  # noqa: E402
from helpers.io import VolumeError, load_volume, save_volume  # noqa: E402
from helpers.tumours import TUMOUR_LABELS, make_tumour_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tumour_root(tmp_path_factory):
    return make_tumour_dataset(tmp_path_factory.mktemp("tumour") / "Dataset042_Tumour", cases=5, unlabelled=1)


@pytest.fixture
def tumour(tumour_root, tmp_path):
    target = tmp_path / "Dataset042_Tumour"
    shutil.copytree(tumour_root, target)
    return target


def put_value(path, value, where=(3, 4, 5)):
    """Write ``value`` at voxel ``where`` (Z, Y, X) of a float32 label file, keeping its affine."""
    vol = load_volume(path)
    array = vol.array.astype(np.float32)
    array[where] = value
    save_volume(path, array, affine=vol.affine)


def test_the_generated_export_is_what_real_exports_look_like(tumour_root):
    import nibabel as nib

    spec = json.loads((tumour_root / "dataset.json").read_text())
    assert sorted(spec) == ["channel_names", "file_ending", "labels", "numTraining"]  # nnU-Net v2's four
    label = nib.load(tumour_root / "labelsTr" / "TUM_0000.nii.gz")
    assert label.get_data_dtype() == np.float32
    flair = nib.load(tumour_root / "imagesTr" / "TUM_0000_0000.nii.gz").get_fdata()
    assert abs(flair.mean()) < 1e-3 and abs(flair.std() - 1) < 1e-3  # already z-scored
    assert flair[0, 0, 0] < -0.5  # and the air around the head is not 0
    stored = np.unique(label.get_fdata())
    assert stored.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_two_channel_float_label_export_opens_with_its_name_from_the_folder(tumour_root):
    ds = open_dataset(tumour_root)
    assert ds.name == "Tumour" and ds.channel_names == ("FLAIR", "T1c") and ds.modality == ["MR", "MR"]
    assert ds.class_names == tuple(TUMOUR_LABELS) and ds.split["kind"] == "cases"
    assert all(c.image.shape[3] == 2 and c.labels.dtype == np.uint8 for c in ds.cases)
    assert all(len(c.image_paths) == 2 for c in ds.cases)
    stats = ds.case_stats["TUM_0000"]
    assert len(stats["channels"]) == 2 and stats["class_ml"][1] > 0


def test_float_labels_are_read_by_one_reader_on_every_path(tumour_root):
    from helpers.evaluation import native_labels
    from helpers.geometry import load_pair

    ds = open_dataset(tumour_root)
    case = ds.cases[0]
    truth, _ = native_labels(ds, case.name)  # evaluation's path: once an IndexError on float labels
    image, labels = load_pair(case.image_paths[0], case.labels_path, n_classes=4)
    stored = np.rint(load_volume(case.labels_path).array).astype(np.uint8)
    assert truth.dtype == labels.dtype == np.uint8
    assert np.array_equal(truth, stored) and np.array_equal(labels, stored)


@pytest.mark.parametrize(("value", "words"), [(2.5, "non-integer label value 2.5"), (7.0, "label id 7")])
def test_a_bad_label_value_is_refused_on_every_path_naming_file_value_and_voxel(tumour, value, words):
    from helpers.evaluation import native_labels
    from helpers.geometry import load_pair

    ds = open_dataset(tumour)  # preprocessed before the damage, so evaluation reads the file itself
    path = tumour / "labelsTr" / "TUM_0001.nii.gz"
    put_value(path, value)
    for read in (
        lambda: open_dataset(tumour),
        lambda: native_labels(ds, "TUM_0001"),
        lambda: load_pair(tumour / "imagesTr" / "TUM_0001_0000.nii.gz", path, n_classes=4),
    ):
        with pytest.raises(VolumeError) as err:
            read()
        message = str(err.value)
        assert str(path) in message and words in message and "(3, 4, 5)" in message, message


def test_nan_in_a_float_label_map_is_refused_with_its_voxel(tumour):
    path = tumour / "labelsTr" / "TUM_0002.nii.gz"
    put_value(path, np.nan, (1, 2, 3))
    with pytest.raises(DatasetError, match=r"TUM_0002.nii.gz.*NaN or Inf at voxel \(z, y, x\) = \(1, 2, 3\)"):
        open_dataset(tumour)


def test_an_undeclared_id_names_how_to_declare_it(tmp_path):
    root = make_cores_dataset(tmp_path / "SandstoneCores")
    spec = json.loads((root / "dataset.json").read_text())
    spec["labels"]["pore"] = 0  # the resin, id 9, is no longer merged into the background
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match=r"label id 9 at voxel .* does not declare .*a list merges ids"):
        open_dataset(root)


def edit(root, **changes):
    spec = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    (root / "dataset.json").write_text(json.dumps(spec))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"numTraining": None}, "['numTraining'], which nnU-Net v2 requires"),
        ({"file_ending": None}, "['file_ending']"),
        ({"numTraining": 9}, "'numTraining' is 9, but imagesTr/ and labelsTr/ hold 5 case(s)"),
        ({"file_ending": "nii"}, "'file_ending' must be a suffix"),
        ({"regions_class_order": [1, 2, 3]}, "'regions_class_order'"),
        ({"name": ""}, "'name' must be a non-empty string"),
    ],
)
def test_nnunet_v2_keys_are_checked_by_name(tumour, changes, words):
    edit(tumour, **changes)
    with pytest.raises(DatasetError) as err:
        open_dataset(tumour)
    assert "dataset.json" in str(err.value) and words in str(err.value), str(err.value)


def test_documented_optional_keys_are_accepted(tumour):
    edit(tumour, description="d", reference="r", licence="CC-BY", release="1.0",
         overwrite_image_reader_writer="NibabelIOWithReorient", name="Brains")  # fmt: skip
    assert open_dataset(tumour).name == "Brains"


def test_a_folder_name_without_nnunet_prefix_is_the_name(tumour, tmp_path):
    plain = tmp_path / "my scans"
    shutil.move(tumour, plain)
    assert open_dataset(plain).name == "my scans"


# ------------------------------------------------------------------ the plan


def fingerprint(extent, foreground, spacing=(1.0, 1.0, 1.0)):
    return {
        "median_spacing": list(spacing),
        "median_extent_mm": list(extent),
        "median_foreground_mm": list(foreground),
    }


def test_a_patch_that_sees_too_little_plans_a_coarser_grid():
    from helpers.planning import describe_plan, make_plan

    plan = make_plan(fingerprint((155, 240, 240), (70, 80, 75)), patch_size=32, batch_size=8)
    assert plan["target_spacing"] == [2.5, 2.5, 2.5] and plan["patch_size"] == [32, 32, 32]
    assert plan["patch_mm"] == [80.0, 80.0, 80.0] and plan["foreground_fraction"] == [1.0, 1.0, 1.0]
    assert plan["native_patch_mm"] == [32.0, 32.0, 32.0] and plan["bottleneck"] == [1, 1, 1]
    text = describe_plan(plan)
    assert "80 x 80 x 80 mm" in text and "coarsened 2.50x" in text and "1 x 1 x 1 voxel" in text


def test_a_patch_that_sees_enough_keeps_the_native_grid_and_hand_settings_win():
    from helpers.planning import make_plan

    small = make_plan(fingerprint((40, 48, 48), (40, 48, 48)), patch_size=32, batch_size=2)
    assert small["target_spacing"] == [1.0, 1.0, 1.0] and small["coarsened"] == 1.0
    big = fingerprint((155, 240, 240), (70, 80, 75))
    assert make_plan(big, patch_size=32, batch_size=8, target_spacing=(1, 1, 1))["target_spacing"] == [
        1,
        1,
        1,
    ]
    capped = make_plan(fingerprint((600, 600, 600), (500, 500, 500)), patch_size=32, batch_size=8)
    assert capped["target_spacing"] == [4.0, 4.0, 4.0]  # MAX_COARSENING


def test_an_anisotropic_scan_is_coarsened_in_plane_first():
    from helpers.planning import make_plan

    plan = make_plan(
        fingerprint((200, 300, 300), (150, 150, 150), (5.0, 0.8, 0.8)), patch_size=32, batch_size=2
    )
    assert plan["target_spacing"][0] == 5.0 and plan["target_spacing"][1] > 0.8


def test_prepare_plans_from_the_data_and_model_json_keeps_the_plan(tmp_path):
    from helpers.config import get_params
    from helpers.experiment import model_info, patch_shape, prepare

    root = make_tumour_dataset(
        tmp_path / "Dataset007_Big", cases=3, unlabelled=0, shape=(76, 90, 76), spacing=2.0
    )
    params = get_params("quick", str(root), output_dir=str(tmp_path / "out"), patch_size=32)
    ds = prepare(params)
    fp = ds.plan["fingerprint"]
    assert fp["median_spacing"] == [2.0, 2.0, 2.0] and fp["channels"] == ["FLAIR", "T1c"]
    assert ds.plan["coarsened"] > 1 and np.allclose(ds.target_spacing, ds.plan["target_spacing"])
    assert ds.cases[0].shape[0] < 76  # preprocessed again onto the planned grid
    info = model_info(ds, params, patch_shape(ds, params))
    assert info["plan"]["target_spacing"] == info["target_spacing"] and "fingerprint" not in info["plan"]
    native = get_params("quick", str(root), output_dir=str(tmp_path / "out"), target_spacing=(2.0, 2.0, 2.0))
    assert prepare(native).plan["reason"] == "set by params (target_spacing)"
    assert native["run_dir"] != params["run_dir"]


# ------------------------------------------------------------------ figures with channels


def test_figures_draw_each_channel_by_name():
    from helpers.viz import SliceViewer, channel_view, plot_histogram, show_orthogonal

    image = np.zeros((8, 9, 10, 2), np.float32)
    image[..., 1] = 1.0
    labels = np.zeros((8, 9, 10), np.uint8)
    labels[2:5, 3:6, 4:7] = 1
    fig = show_orthogonal(image, labels, class_names=("bg", "x"), channel_names=("FLAIR", "T1c"))
    assert len(fig.axes) == 6 and fig.axes[3].get_title().startswith("T1c")
    one = show_orthogonal(image, labels, channel="T1c", channel_names=("FLAIR", "T1c"))
    assert len(one.axes) == 3 and np.all(one.axes[0].images[0].get_array() == 1.0)
    assert len(plot_histogram(image, labels, channel_names=("FLAIR", "T1c")).axes) == 2
    viewer = SliceViewer(image, {"labels": labels}, channel_names=("FLAIR", "T1c"))
    assert [o[0] for o in viewer.channel.options] == ["FLAIR", "T1c"]
    viewer.channel.value = 1
    assert np.all(viewer.artists[0].get_array() == 1.0)
    with pytest.raises(ValueError, match="channel='ADC' is not one of"):
        channel_view(image, "ADC", ("FLAIR", "T1c"))
