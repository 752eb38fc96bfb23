"""Issue 9: a folder of labelled scans, aligned, resampled, normalised, split by case."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers.datasets import CORES, DatasetError, make_cores_dataset, open_dataset
from helpers.preprocessing import fit_normalisation
from helpers.splits import SplitError, load_or_make_split, split_cases


@pytest.fixture(scope="module")
def cores_root(tmp_path_factory):
    return make_cores_dataset(tmp_path_factory.mktemp("cores") / "SandstoneCores")


@pytest.fixture(scope="module")
def cores(cores_root):
    return open_dataset(cores_root)


@pytest.fixture
def copy(cores_root, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(cores_root, target)
    return target


def test_cores_come_aligned_resampled_and_normalised(cores):
    assert cores.name == "SandstoneCores" and cores.modality == "CT"
    assert cores.class_names == ("pore", "clay", "quartz", "pyrite") and cores.label_ids[3] == [3, 4]
    assert len(cores.cases) == len(CORES) and len(cores.unlabelled) == 2
    spacings = np.array([s for _, _, s, _, _ in CORES])
    assert np.allclose(cores.target_spacing, np.median(spacings, axis=0))
    for case in cores.cases:
        assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
        assert np.allclose(np.linalg.norm(case.affine[:3, :3], axis=0)[::-1], cores.target_spacing, rtol=0.08)
        assert case.image.dtype == np.float32 and case.labels.dtype == np.uint8
        assert set(np.unique(case.labels)) <= {0, 1, 2, 3}
        means = [case.image[case.labels == c].mean() for c in range(4)]
        assert means == sorted(means), (case.name, means)  # pore < clay < quartz < pyrite: aligned
    assert cores.normalisation["scheme"] == "ct-clip-zscore"


def test_ct_normalisation_is_fitted_on_the_training_cases_only(cores_root, cores):
    from helpers.geometry import to_working_grid
    from helpers.io import load_volume

    raw_images, raw_labels = [], []
    for case in cores.cases:
        if case.name in cores.split["train"]:
            work, _ = to_working_grid(load_volume(case.image_path), cores.target_spacing)
            raw_images.append(work.array)
            raw_labels.append(case.labels)
    expected = fit_normalisation(raw_images, raw_labels, "CT")
    assert expected == cores.normalisation


def test_flipped_label_map_lands_on_the_image_in_world_space(cores):
    case = cores.case("core05")
    image, stored = nib.load(case.image_path), nib.load(case.labels_path)
    assert nib.aff2axcodes(stored.affine) != nib.aff2axcodes(image.affine)  # stored LAS for a RAS image
    lab, grey = np.asarray(stored.dataobj), np.asarray(image.dataobj)

    def mean_grey(ids, use_affines=True):
        ijk = np.argwhere(np.isin(lab, ids))  # (i, j, k) voxels of the stored label map
        if use_affines:
            world = stored.affine @ np.c_[ijk, np.ones(len(ijk))].T
            ijk = np.round(np.linalg.inv(image.affine) @ world).astype(int)[:3].T
        return grey[ijk[:, 0], ijk[:, 1], ijk[:, 2]].mean()

    classes = ([0], [1], [2], [3, 4])  # pore < clay < quartz < pyrite in grey value
    through_affines = [mean_grey(ids) for ids in classes]
    assert through_affines == sorted(through_affines)
    assert through_affines[2] - through_affines[0] > 800
    by_index = [mean_grey(ids, use_affines=False) for ids in classes]
    assert by_index[2] - by_index[0] < 400  # reading the flipped map index by index mixes the phases
    aligned = case.labels
    assert [case.image[aligned == c].mean() for c in range(4)] == sorted(
        case.image[aligned == c].mean() for c in range(4)
    )


def test_split_by_case_is_reproducible_and_disjoint(cores_root):
    names = [f"c{i}" for i in range(11)]
    a, b, c = (
        split_cases(names, seed=4),
        split_cases(names, seed=4),
        split_cases(list(reversed(names)), seed=4),
    )
    assert a == b == c
    parts = [set(a[p]) for p in ("train", "val", "test")]
    assert set().union(*parts) == set(names) and sum(len(p) for p in parts) == len(names)
    assert all(parts)
    assert split_cases(names, seed=5) != a
    ds = open_dataset(cores_root, seed=1)
    listed = ds.split["train"] + ds.split["val"] + ds.split["test"]
    assert sorted(listed) == sorted(c.name for c in ds.cases) and len(set(listed)) == len(listed)
    with pytest.raises(SplitError, match="3 or more cases"):
        split_cases(["a", "b"])


def test_a_saved_split_is_reused_and_a_changed_one_refused(tmp_path):
    first = load_or_make_split(tmp_path, lambda: split_cases(list("abcdefg"), seed=0))
    assert json.loads((tmp_path / "split.json").read_text()) == first
    assert load_or_make_split(tmp_path, lambda: split_cases(list("abcdefg"), seed=0)) == first
    with pytest.raises(SplitError, match="another split"):
        load_or_make_split(tmp_path, lambda: split_cases(list("abcdefg"), seed=1))


def test_embedded_volumes_come_through_the_same_api():
    """Issue 32: the embedded demos are several whole cases, split by case like a folder's."""
    ds = open_dataset("sandstone", sandstone_shape=(40, 40, 40))
    assert ds.split["kind"] == "cases" and ds.n_classes == 4 and len(ds.cases) >= 5
    images, labels = ds.arrays("val")
    assert all(im.shape == lab.shape == (40, 40, 40) for im, lab in zip(images, labels, strict=True))
    brain = open_dataset("brain", brain_zoom=0.25)
    assert brain.split["kind"] == "cases" and brain.modality == "MR" and len(brain.split["test"]) >= 1


def edit_json(root, **changes):
    spec = json.loads((root / "dataset.json").read_text())
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


def expect(root, *words):
    with pytest.raises(DatasetError) as err:
        open_dataset(root)
    for w in words:
        assert str(w) in str(err.value), str(err.value)
    return str(err.value)


def test_missing_dataset_json(copy):
    (copy / "dataset.json").unlink()
    expect(copy, "dataset.json", "no dataset.json")


@pytest.mark.parametrize("key", ["modality", "labels"])
def test_missing_keys(copy, key):
    expect(copy, edit_json(copy, **{key: None}), "lacks", f"'{key}'")


def test_a_missing_name_is_the_folders(copy):
    edit_json(copy, name=None)
    assert open_dataset(copy).name == copy.name


def test_unknown_modality(copy):
    expect(copy, edit_json(copy, modality="PET"), "'PET'", "CT")


@pytest.mark.parametrize("spacing", [[1.0, 0.0, 1.0], [1.0, -2.0, 1.0], [1.0, 1.0]])
def test_target_spacing_must_be_positive(copy, spacing):
    expect(copy, edit_json(copy, target_spacing=spacing), "target_spacing must be 3 numbers > 0")


def test_a_label_id_no_map_contains(copy):
    labels = {"pore": [0, 9], "clay": 1, "quartz": 2, "pyrite": [3, 4], "gold": 12}
    expect(copy, edit_json(copy, labels=labels), "'gold'", "[12]")


def test_image_without_labels_and_labels_without_image(copy):
    (copy / "labelsTr" / "core02.npz").unlink()
    expect(copy, "core02", "no label map")
    shutil.rmtree(copy / "imagesTr" / "core04_0000")
    (copy / "imagesTr" / "core02_0000.npz").unlink()
    expect(copy, "core04", "no image")


def test_label_map_on_another_grid(copy):
    from helpers.io import load_volume, save_volume

    path = copy / "labelsTr" / "core00.nii.gz"
    vol = load_volume(path)
    save_volume(path, vol.array, affine=vol.affine @ np.diag([1.5, 1, 1, 1]))
    expect(copy, "core00", "different grid", "core00_0000.nii.gz")


def test_non_integer_labels(copy):
    from helpers.io import load_volume, save_volume

    path = copy / "labelsTr" / "core00.nii.gz"
    vol = load_volume(path)
    save_volume(path, vol.array.astype(np.float32) + 0.25, like=vol)
    expect(copy, "core00", "non-integer")


def test_a_corrupt_case_is_named_and_nothing_trains_on_the_rest(copy):
    path = copy / "imagesTr" / "core03_0000.tif"
    path.write_bytes(path.read_bytes()[:300])
    expect(copy, "case 'core03'", "core03_0000.tif", "corrupt")


@pytest.mark.slow
def test_quick_training_on_the_multi_case_dataset_lowers_the_loss(cores, tmp_path):
    """Patches from several cases feed a training whose loss falls (the stand-in network learns
    as any would; test_training trains the U-Net itself)."""
    from stub_models import small_unet_stand_in

    from helpers.sampling import PatchSampler
    from helpers.training import train

    images, labels = cores.arrays("train")
    train_data = PatchSampler(images, labels, 32, 2, 3, n_classes=4, seed=0, names=cores.split["train"])
    val_images, val_labels = cores.arrays("val")
    val_data = PatchSampler(
        val_images,
        val_labels,
        32,
        2,
        2,
        n_classes=4,
        foreground_fraction=0.0,
        augment=False,
        resample_each_epoch=False,
    )
    history = train(
        small_unet_stand_in(4, 32), train_data, val_data, 3, tmp_path, learning_rate=2e-3, verbose=0
    )
    assert history["epoch"] == [0, 1, 2]
    assert min(history["loss"][1:]) < history["loss"][0]


# ------------------------------------------------------- issue 19: public layouts, exactly as distributed


def blob_case(seed, shape=(12, 14, 16)):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[3:8, 4:10, 5:12] = 1
    image = (labels * 200 + rng.normal(0, 20, shape) - 100).astype(np.int16)
    return image, labels


def write_nifti(path, array, spacing=(2.0, 0.8, 0.8)):
    from helpers.io import save_volume

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_volume(path, array, affine=np.diag([*spacing[::-1], 1.0]))


def msd_spleen(root, four_d=False):
    """Task09_Spleen in miniature: MSD's names, dataset.json form and macOS ``._`` files."""
    training = []
    for k in (2, 3, 6, 8):
        image, labels = blob_case(k)
        write_nifti(root / "imagesTr" / f"spleen_{k}.nii.gz", image[..., None] if four_d else image)
        write_nifti(root / "labelsTr" / f"spleen_{k}.nii.gz", labels)
        (root / "imagesTr" / f"._spleen_{k}.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")
        training.append({"image": f"./imagesTr/spleen_{k}.nii.gz", "label": f"./labelsTr/spleen_{k}.nii.gz"})
    write_nifti(root / "imagesTs" / "spleen_1.nii.gz", blob_case(1)[0])
    spec = {
        "name": "Spleen",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": 4,
        "numTest": 1,
        "training": training,
        "test": ["./imagesTs/spleen_1.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def nnunet_amos(root, channels=1):
    """nnU-Net v2 raw data with AMOS case ids (which end in four digits) and free-text channel names."""
    for case in ("amos_0507", "amos_0508", "amos_0510", "amos_0514"):
        image, labels = blob_case(int(case[-3:]))
        for c in range(channels):
            write_nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", image + 10 * c)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", labels)
    names = {"0": "MRI", "1": "ADC"} if channels == 2 else {"0": "MRI"}
    spec = {"name": "AMOS", "channel_names": names, "labels": {"background": 0, "liver": 1}}
    (root / "dataset.json").write_text(json.dumps({**spec, "numTraining": 4, "file_ending": ".nii.gz"}))
    return root


@pytest.mark.parametrize("four_d", [False, True])
def test_msd_spleen_opens_as_distributed(tmp_path, four_d):
    ds = open_dataset(msd_spleen(tmp_path / "Task09_Spleen", four_d))
    assert sorted(c.name for c in ds.cases) == ["spleen_2", "spleen_3", "spleen_6", "spleen_8"]
    assert ds.modality == "CT" and ds.class_names == ("background", "spleen")
    assert [Path(p).name for p in ds.unlabelled] == ["spleen_1.nii.gz"]
    assert all(c.image.ndim == 3 and c.labels.max() == 1 for c in ds.cases)


def test_nnunet_v2_case_ids_ending_in_digits_and_free_text_channel_names(tmp_path):
    ds = open_dataset(nnunet_amos(tmp_path / "Dataset218_AMOS"))
    assert sorted(c.name for c in ds.cases) == ["amos_0507", "amos_0508", "amos_0510", "amos_0514"]
    assert ds.modality == "MR" and ds.normalisation["scheme"] == "zscore-per-case"
    assert ds.class_names == ("background", "liver")


def test_two_channels_in_nnunet_files_or_an_msd_fourth_axis_are_normalised_per_channel(tmp_path):
    ds = open_dataset(nnunet_amos(tmp_path / "two", channels=2))
    assert ds.channel_names == ("MRI", "ADC") and ds.n_channels == 2 and ds.modality == ["MR", "other"]
    assert all(c.image.shape[3:] == (2,) for c in ds.cases)
    assert [s["scheme"] for s in ds.normalisation["channels"]] == ["zscore-per-case", "zscore-per-case"]
    train = ds.arrays("train")[0][0]
    assert np.allclose(train.mean(axis=(0, 1, 2)), 0, atol=0.2)  # each channel z-scored on its own
    root = msd_spleen(tmp_path / "prostate")
    spec = json.loads((root / "dataset.json").read_text())
    for entry in spec["training"]:
        path = root / entry["image"]
        image = nib.load(path).get_fdata()
        nib.save(nib.Nifti1Image(np.stack([image, -image], -1), nib.load(path).affine), path)
    (root / "dataset.json").write_text(json.dumps({**spec, "modality": {"0": "T2", "1": "ADC"}}))
    prostate = open_dataset(root)
    assert prostate.n_channels == 2 and all(c.image.shape[3] == 2 for c in prostate.cases)


def test_a_missing_channel_and_channels_on_two_grids_are_named(tmp_path):
    root = nnunet_amos(tmp_path / "missing", channels=2)
    (root / "imagesTr" / "amos_0510_0001.nii.gz").unlink()
    expect(root, "amos_0510_0000.nii.gz", "has 1 image channel(s), but dataset.json lists 2")
    (root / "imagesTr" / "amos_0507_0000.nii.gz").rename(root / "imagesTr" / "amos_0507_0002.nii.gz")
    expect(root, "amos_0507_0001.nii.gz", "lacks image channel(s) ['_0000']")
    root = nnunet_amos(tmp_path / "grids", channels=2)
    write_nifti(root / "imagesTr" / "amos_0508_0001.nii.gz", blob_case(0, (12, 14, 15))[0])
    expect(root, "amos_0508_0001.nii.gz", "another grid", "amos_0508_0000.nii.gz")
    root = nnunet_amos(tmp_path / "count")
    edit_json(root, channel_names={"0": "T2", "1": "ADC"})
    expect(root, "has 1 image channel(s), but dataset.json lists 2")


def test_public_layouts_that_are_not_supported_are_refused_clearly(tmp_path):
    root = nnunet_amos(tmp_path / "regions")
    edit_json(root, labels={"background": 0, "whole tumour": [1, 2, 3], "core": [2, 3]})
    expect(root, "nnU-Net regions", "'whole tumour'", "'core'")
    spleen = msd_spleen(tmp_path / "missing")
    (spleen / "labelsTr" / "spleen_6.nii.gz").unlink()
    expect(spleen, "'training' lists './labelsTr/spleen_6.nii.gz'", "does not exist")


@pytest.mark.parametrize("n_cases", [1, 2])
def test_one_or_two_labelled_cases_are_each_cut_into_disjoint_slabs(tmp_path, n_cases):
    root = msd_spleen(tmp_path / "few")
    spec = json.loads((root / "dataset.json").read_text())
    spec["training"] = spec["training"][:n_cases]
    (root / "dataset.json").write_text(json.dumps(spec))
    ds = open_dataset(root)
    assert ds.split["kind"] == "slabs" and len(ds.split["cases"]) == n_cases
    for case in ds.cases:
        z = np.zeros(case.shape[0], int)
        for part in ("train", "val", "test"):
            regions = [r for c, r in ds.part(part) if c.name == case.name]
            assert len(regions) == 1 and case.image[regions[0]].size > 0
            z[regions[0][0]] += 1
        assert np.all(z == 1)  # the three slabs of a case cover it once, without overlap
    images, labels = ds.arrays("train")
    assert len(images) == n_cases and all(i.shape == lab.shape for i, lab in zip(images, labels, strict=True))


@pytest.mark.slow
def test_a_two_channel_dataset_trains_and_its_scans_are_segmented_through_the_cli(
    tmp_path, capsys, monkeypatch
):
    from course_checks import predict_in_process
    from stub_models import small_unet_stand_in

    import helpers.model
    from helpers.config import get_params
    from helpers.experiment import train_from_params
    from helpers.io import load_volume

    root = nnunet_amos(tmp_path / "Dataset024_Prostate", channels=2)
    image = blob_case(600, (14, 12, 18))[0]
    for c in range(2):
        write_nifti(root / "imagesTs" / f"prost_0600_{c:04d}.nii.gz", image + 10 * c, spacing=(1.5, 0.9, 0.7))
    params = get_params("quick", str(root), output_dir=str(tmp_path / "out"))
    monkeypatch.setattr(helpers.model, "build_unet", small_unet_stand_in)  # the channels are under test
    history = train_from_params(params, verbose=0)
    assert len(history["loss"]) == params["epochs"]
    info = json.loads((Path(params["run_dir"]) / "model.json").read_text())
    assert info["channel_names"] == ["MRI", "ADC"]
    code, out, err = predict_in_process(capsys, params["run_dir"], root / "imagesTs", "-o", tmp_path / "seg")
    assert code == 0 and "1 of 1 scans segmented" in out, err[-2000:]
    seg, scan = (
        load_volume(tmp_path / "seg" / "prost_0600_seg.nii.gz"),
        load_volume(root / "imagesTs" / "prost_0600_0000.nii.gz"),
    )
    assert seg.shape == scan.shape and np.allclose(seg.affine, scan.affine, atol=1e-5)
    one = root / "imagesTs" / "prost_0600_0000.nii.gz"
    code, _, err = predict_in_process(capsys, params["run_dir"], one, "-o", tmp_path / "one")
    assert code == 1 and "has 1 image channel(s), but the model takes 2 (MRI, ADC)" in err
    assert "prost_0600_0000.nii.gz" in err
