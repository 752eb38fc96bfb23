"""A catalogue of bad inputs to the public helpers, each with what a clear error must say.

Each :class:`Case` builds its input in a temporary folder and returns a call that
must raise a ``ValueError`` (or subclass) whose message contains ``names`` (the
argument or the file) and every word of ``reason``. ``tests/test_bad_inputs.py``
asserts that for every case; ``scripts/probe_bad_inputs.py`` runs the same table
on any checkout and counts clear / wrong-reason / silent / deep answers.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

Call = Callable[[], Any]


@dataclass
class Case:
    id: str
    category: str
    make: Callable[[Path], tuple[Call, str]]
    reason: tuple[str, ...] = ()


def _npy(array: np.ndarray) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.io import load_volume

        path = tmp / "bad.npy"
        np.save(path, array, allow_pickle=False)
        return (lambda: load_volume(path)), str(path)

    return make


def _npz_affine(affine: np.ndarray) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.io import load_volume

        path = tmp / "bad.npz"
        np.savez(path, array=np.zeros((4, 4, 4), np.float32), affine=affine)
        return (lambda: load_volume(path)), str(path)

    return make


def _tiff(array: np.ndarray) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        import tifffile

        from helpers.io import load_volume

        path = tmp / "bad.tif"
        tifffile.imwrite(path, array)
        return (lambda: load_volume(path)), str(path)

    return make


def _dicom_series(tmp: Path) -> list[Path]:
    from helpers.io import write_dicom_series

    data = np.arange(5 * 8 * 8, dtype=np.float32).reshape(5, 8, 8)
    return sorted(write_dicom_series(tmp / "series", data, np.eye(4)))


def _dicom_truncated(tmp: Path) -> tuple[Call, str]:
    from helpers.io import load_volume

    files = _dicom_series(tmp)
    files[2].write_bytes(files[2].read_bytes()[:400])  # the header survives, the pixels do not
    return (lambda: load_volume(tmp / "series")), str(files[2])


def _multiframe(tmp: Path, n_files: int) -> tuple[Call, str]:
    import pydicom
    from pydicom.uid import generate_uid

    from helpers.io import load_volume

    folder = tmp / "multiframe"
    folder.mkdir()
    uid = generate_uid()
    for k, src in enumerate(_dicom_series(tmp)[:n_files]):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = uid
        ds.NumberOfFrames = 3
        ds.PixelData = np.zeros((3, 8, 8), np.int16).tobytes()
        ds.ImagePositionPatient = [0.0, 0.0, float(10 * k)]
        ds.save_as(folder / f"mf{k}.dcm", enforce_file_format=True)
    return (lambda: load_volume(folder)), str(folder / "mf0.dcm")


def _nifti_header_claims(suffix: str) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        import nibabel as nib

        from helpers.io import load_volume

        header = nib.Nifti1Header()
        header.set_data_shape((1024, 1024, 512))  # 2 GiB of float32
        header.set_data_dtype(np.float32)
        raw = header.binaryblock + b"\0" * 4 + b"\0" * 16
        path = tmp / f"huge{suffix}"
        path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
        return (lambda: load_volume(path)), str(path)

    return make


def _nifti_claim(shape: tuple[int, int, int], nifti2: bool = False) -> Callable[[Path], tuple[Call, str]]:
    """A ~100-byte ``.nii.gz`` whose header claims ``shape`` of uint8 (NIfTI-2 for axes past 32767)."""

    def make(tmp: Path) -> tuple[Call, str]:
        import nibabel as nib

        from helpers.io import load_volume

        header = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
        header.set_data_dtype(np.uint8)
        header.set_data_shape(shape)
        header.set_data_offset(len(header.binaryblock) + 4)  # 352 (NIfTI-1) or 544 (NIfTI-2)
        path = tmp / f"claims-{'x'.join(map(str, shape))}.nii.gz"
        path.write_bytes(gzip.compress(header.binaryblock + b"\0" * (4 + 16)))
        return (lambda: load_volume(path)), str(path)

    return make


def _nifti_empty_axis(tmp: Path) -> tuple[Call, str]:
    import nibabel as nib

    from helpers.io import load_volume

    path = tmp / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((0, 5, 6), np.float32), np.eye(4)), path)
    return (lambda: load_volume(path)), str(path)


def _gz_permission_denied(tmp: Path) -> tuple[Call, str]:
    import nibabel as nib

    from helpers.io import load_volume

    path = tmp / "locked.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)

    def call() -> Any:  # root reads any file, so the refusal is simulated where files are opened
        with mock.patch("builtins.open", side_effect=PermissionError(13, "Permission denied")):
            return load_volume(path)

    return call, str(path)


def _dicom_zero_orientation(tmp: Path) -> tuple[Call, str]:
    import pydicom

    from helpers.io import load_volume

    files = _dicom_series(tmp)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [0.0] * 6
        ds.save_as(f, enforce_file_format=True)
    return (lambda: load_volume(tmp / "series")), str(files[0])


def _dicom_mixed_sizes(tmp: Path) -> tuple[Call, str]:
    import pydicom

    from helpers.io import load_volume

    files = _dicom_series(tmp)
    odd = max(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]) == 2.0)
    ds = pydicom.dcmread(odd)
    ds.Rows, ds.Columns = 8, 10
    ds.PixelData = np.zeros((8, 10), np.int16).tobytes()
    ds.save_as(odd, enforce_file_format=True)
    return (lambda: load_volume(tmp / "series")), str(odd)


def _symlink_loop(tmp: Path) -> tuple[Call, str]:
    from helpers.io import load_volume

    a, b = tmp / "a.nii.gz", tmp / "b.nii.gz"
    os.symlink(b, a)
    os.symlink(a, b)
    return (lambda: load_volume(a)), str(a)


def _permission_denied(tmp: Path) -> tuple[Call, str]:
    from helpers.io import load_volume

    path = tmp / "locked.npy"
    np.save(path, np.zeros((4, 4, 4), np.float32))

    def call() -> Any:  # root reads any file, so the refusal is simulated where files are opened
        with mock.patch("builtins.open", side_effect=PermissionError(13, "Permission denied")):
            with mock.patch("numpy.load", side_effect=PermissionError(13, "Permission denied")):
                return load_volume(path)

    return call, str(path)


def _random_bytes(name: str) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        path = tmp / name
        path.write_bytes(np.random.default_rng(0).bytes(512))
        if name.endswith((".keras", ".h5")):
            from helpers.model import load_model

            return (lambda: load_model(path)), str(path)
        from helpers.io import load_volume

        return (lambda: load_volume(path)), str(path)

    return make


def _load_volume_arg(value: Any) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.io import load_volume

        return (lambda: load_volume(value)), "path"

    return make


def _save(array: Any, name: str = "out.nii.gz", affine: Any = None) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.io import save_volume

        path = tmp / name
        return (lambda: save_volume(path, array, affine=affine)), str(path)

    return make


def _save_unwritable(tmp: Path) -> tuple[Call, str]:
    from helpers.io import save_volume

    path = tmp / "out.nii.gz"

    def call() -> Any:  # simulated: root may write anywhere
        with mock.patch("tempfile.mkstemp", side_effect=PermissionError(13, "Permission denied")):
            return save_volume(path, np.zeros((4, 4, 4), np.float32))

    return call, str(path)


def _predict(
    factory: Callable[[], Any], volume: Any, name: str, **kwargs: Any
) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.inference import predict_volume

        args = {"patch_size": 16, "progress": False, **kwargs}
        return (lambda: predict_volume(factory(), volume, **args)), name

    return make


def _constant_model(value: float) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    return lambda: lambda batch: np.full((*batch.shape[:4], 2), value, np.float32)


def _changing_channels() -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
    def factory() -> Callable[[np.ndarray], np.ndarray]:
        calls = []

        def model(batch: np.ndarray) -> np.ndarray:
            calls.append(1)
            return np.ones((*batch.shape[:4], 3 if len(calls) == 1 else 2), np.float32)

        return model

    return factory


def _keras_model_16() -> Any:
    import keras

    inputs = keras.Input((16, 16, 16, 1))
    return keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))


def _keras_patch_mismatch(tmp: Path) -> tuple[Call, str]:
    from helpers.inference import predict_volume

    model = _keras_model_16()
    volume = np.zeros((40, 40, 40), np.float32)
    predict_volume(model, volume, 16, batch_size=2, progress=False)  # a correct call first

    return (lambda: predict_volume(model, volume, 32, batch_size=2, progress=False)), "patch_size"


def _keras_model_any_size() -> Any:
    import keras

    inputs = keras.Input((None, None, None, 1))
    return keras.Model(inputs, keras.layers.Conv3D(2, 1, activation="softmax")(inputs))


def _keras_channels(fresh: bool) -> Callable[[Path], tuple[Call, str]]:
    """A 1-channel model given a 2-channel volume: fresh, or after a correct call at another patch size."""

    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.inference import predict_volume

        model = _keras_model_16() if fresh else _keras_model_any_size()
        if not fresh:
            predict_volume(model, np.zeros((20, 18, 22), np.float32), 16, batch_size=2, progress=False)
        volume = np.zeros((20, 18, 22, 2), np.float32)
        return (
            lambda: predict_volume(model, volume, 16 if fresh else 8, batch_size=2, progress=False)
        ), "channel"

    return make


def _sampler(image: Any, labels: Any, name: str, **kwargs: Any) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.sampling import PatchSampler

        args = {"patch_size": 8, "batch_size": 2, "steps_per_epoch": 2, "n_classes": 3, **kwargs}
        return (lambda: PatchSampler(image, labels, **args)), name

    return make


def _params(**kwargs: Any) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.config import get_params

        return (lambda: get_params("quick", "sandstone", **kwargs)), next(iter(kwargs))

    return make


def _corrupt_keras(tmp: Path) -> tuple[Call, str]:
    from helpers.model import load_model

    model = _keras_model_16()
    good = tmp / "good.keras"
    model.save(good)
    path = tmp / "half.keras"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return (lambda: load_model(path)), str(path)


def _load_model_path(name: str, make_file: bool, folder: bool = False) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        from helpers.model import load_model

        path = tmp / name
        if folder:
            path.mkdir()
        elif make_file:
            path.write_text("not a model")
        return (lambda: load_model(path)), str(path)

    return make


def _train_epochs(epochs: Any) -> Callable[[Path], tuple[Call, str]]:
    def make(tmp: Path) -> tuple[Call, str]:
        import keras

        from helpers.sampling import PatchSampler
        from helpers.training import train

        labels = np.zeros((16, 16, 16), np.uint8)
        data = PatchSampler(labels.astype(np.float32), labels, 16, 1, 1, n_classes=2)
        model = _keras_model_16()
        keras.utils.set_random_seed(0)
        return (lambda: train(model, data, None, epochs, tmp / "run", verbose=0)), "epochs"

    return make


_Z = np.zeros((12, 12, 12), np.float32)
_L = np.zeros((12, 12, 12), np.uint8)


def _with(array: np.ndarray, index: tuple, value: Any) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


CASES: list[Case] = [
    # load_volume: content that is not a volume
    Case("npy-complex", "load_volume", _npy(np.zeros((4, 4, 4), np.complex64)), ("complex",)),
    Case("npy-strings", "load_volume", _npy(np.full((2, 2, 2), "abc")), ("not numbers",)),
    Case("npy-empty", "load_volume", _npy(np.zeros((0, 4, 4), np.float32)), ("empty",)),
    Case("npy-scalar", "load_volume", _npy(np.float32(3)), ("0-D",)),
    Case("npy-random-bytes", "load_volume", _random_bytes("noise.npy"), ("NumPy header",)),
    Case("npz-nan-affine", "load_volume", _npz_affine(np.full((4, 4), np.nan)), ("affine", "NaN")),
    Case("npz-zero-affine", "load_volume", _npz_affine(np.zeros((4, 4))), ("affine", "singular")),
    Case("npz-3x3-affine", "load_volume", _npz_affine(np.eye(3)), ("affine", "4x4")),
    Case("tiff-rgb-2d", "load_volume", _tiff(np.zeros((16, 20, 3), np.uint8)), ("2-D",)),
    Case("tiff-3-planes-as-samples", "load_volume", _tiff(np.zeros((3, 32, 32), np.uint8)), ("2-D",)),
    Case("dicom-truncated-slice", "load_volume", _dicom_truncated, ("truncated",)),
    Case("dicom-two-multiframe", "load_volume", lambda t: _multiframe(t, 2), ("multi-frame",)),
    Case("dicom-one-multiframe", "load_volume", lambda t: _multiframe(t, 1), ("multi-frame",)),
    Case("nii.gz-header-claims-2GiB", "load_volume", _nifti_header_claims(".nii.gz"), ("declares",)),
    Case("nii-header-claims-2GiB", "load_volume", _nifti_header_claims(".nii"), ("declares",)),
    Case(
        "nii.gz-claims-exactly-4GiB",
        "load_volume",
        _nifti_claim((2048, 2048, 1024)),
        ("declares", "4,294,967,"),
    ),
    Case("nii.gz-claims-4GiB+1", "load_volume", _nifti_claim((2**32 + 1, 1, 1), True), ("4,294,967,")),
    Case("nii.gz-claims-32GiB", "load_volume", _nifti_claim((2048, 2048, 8192)), ("declares", "34,359,738,")),
    Case("nii.gz-empty-axis", "load_volume", _nifti_empty_axis, ("empty", "(0, 5, 6)")),
    Case("nii.gz-permission-denied", "load_volume", _gz_permission_denied, ("permission denied",)),
    Case("dicom-zero-orientation", "load_volume", _dicom_zero_orientation, ("orientation",)),
    Case("dicom-mixed-slice-sizes", "load_volume", _dicom_mixed_sizes, ("mixes image sizes",)),
    # load_volume: paths
    Case("path-none", "load_volume", _load_volume_arg(None), ("NoneType",)),
    Case("path-int", "load_volume", _load_volume_arg(42), ("int",)),
    Case("path-empty-list", "load_volume", _load_volume_arg([]), ("list",)),
    Case("symlink-loop", "load_volume", _symlink_loop, ("symbolic link loop",)),
    Case("permission-denied", "load_volume", _permission_denied, ("permission denied",)),
    # save_volume
    Case("save-object", "save_volume", _save(np.full((2, 2, 2), None, object)), ("not numbers",)),
    Case("save-complex", "save_volume", _save(np.zeros((2, 2, 2), np.complex64)), ("complex",)),
    Case("save-strings", "save_volume", _save(np.full((2, 2, 2), "a")), ("not numbers",)),
    Case("save-empty", "save_volume", _save(np.zeros((0, 2, 2), np.float32)), ("empty",)),
    Case("save-2d", "save_volume", _save(np.zeros((2, 2), np.float32)), ("2-D",)),
    Case("save-zero-affine", "save_volume", _save(_Z, affine=np.zeros((4, 4))), ("singular",)),
    Case("save-nan-affine", "save_volume", _save(_Z, affine=np.full((4, 4), np.nan)), ("NaN",)),
    Case(
        "save-int64-too-large",
        "save_volume",
        _save(np.full((2, 2, 2), 2**40, np.int64)),
        ("32-bit",),
    ),
    Case("save-unwritable-folder", "save_volume", _save_unwritable, ("permission denied",)),
    # predict_volume
    Case("predict-nan-output", "predict_volume", _predict(_constant_model(np.nan), _Z, "model output")),
    Case("predict-inf-output", "predict_volume", _predict(_constant_model(np.inf), _Z, "model output")),
    Case(
        "predict-complex-volume",
        "predict_volume",
        _predict(_constant_model(0.5), _Z.astype(np.complex64), "volume"),
        ("complex",),
    ),
    Case(
        "predict-string-volume",
        "predict_volume",
        _predict(_constant_model(0.5), np.full((4, 4, 4), "a"), "volume"),
    ),
    Case("predict-patch-vs-model", "predict_volume", _keras_patch_mismatch, ("model's input",)),
    Case("predict-channels-fresh-model", "predict_volume", _keras_channels(True), ("2 channel", "takes 1")),
    Case("predict-channels-used-model", "predict_volume", _keras_channels(False), ("2 channel", "takes 1")),
    Case(
        "predict-pad-value-nan",
        "predict_volume",
        _predict(_constant_model(0.5), _Z, "pad_value", pad_value=float("nan")),
        ("finite",),
    ),
    Case(
        "predict-channels-change",
        "predict_volume",
        _predict(_changing_channels(), np.zeros((40, 40, 40), np.float32), "channels", batch_size=2),
    ),
    # PatchSampler
    Case("sampler-float-labels", "PatchSampler", _sampler(_Z, _L + 0.5, "labels"), ("non-integer",)),
    Case("sampler-nan-labels", "PatchSampler", _sampler(_Z, _with(_Z, (1, 1, 1), np.nan), "labels")),
    Case("sampler-label-too-large", "PatchSampler", _sampler(_Z, _with(_L, (1, 1, 1), 3), "labels")),
    Case(
        "sampler-negative-label",
        "PatchSampler",
        _sampler(_Z, _with(_L.astype(np.int16), (1, 1, 1), -1), "labels"),
    ),
    Case("sampler-nan-image", "PatchSampler", _sampler(_with(_Z, (2, 3, 4), np.nan), _L, "image")),
    Case("sampler-float-batch", "PatchSampler", _sampler(_Z, _L, "batch_size", batch_size=2.5)),
    Case("sampler-zero-classes", "PatchSampler", _sampler(_Z, _L, "n_classes", n_classes=0)),
    Case("sampler-nested-list-labels", "PatchSampler", _sampler(_Z, _L.tolist(), "labels"), ("nested",)),
    # get_params
    Case("params-patch-string", "get_params", _params(patch_size="64")),
    Case("params-patch-48", "get_params", _params(patch_size=48), ("multiple of 32",)),
    Case("params-patch-bool", "get_params", _params(patch_size=True)),
    Case("params-patch-2-axes", "get_params", _params(patch_size=(32, 32))),
    Case("params-epochs-negative", "get_params", _params(epochs=-1)),
    Case("params-epochs-float", "get_params", _params(epochs=2.5)),
    Case("params-batch-zero", "get_params", _params(batch_size=0)),
    Case("params-steps-zero", "get_params", _params(steps_per_epoch=0)),
    Case("params-overlap-1.5", "get_params", _params(overlap=1.5)),
    Case("params-lr-string", "get_params", _params(learning_rate="fast")),
    Case("params-lr-zero", "get_params", _params(learning_rate=0.0)),
    Case("params-loss-typo", "get_params", _params(loss="dicee"), ("dice+ce",)),
    Case("params-sandstone-2d", "get_params", _params(sandstone_shape=(10, 10))),
    Case("params-zoom-zero", "get_params", _params(brain_zoom=0)),
    Case("params-val-fraction-1", "get_params", _params(val_fraction=1.0)),
    Case("params-large-shape-2d", "get_params", _params(large_shape=(512, 512))),
    Case("params-large-chunk-small", "get_params", _params(large_chunk=16), (">= 32",)),
    Case("params-large-overlap-1", "get_params", _params(large_overlap=1.0)),
    Case("params-budget-zero", "get_params", _params(memory_budget_mb=0)),
    # load_model
    Case("model-random-h5", "load_model", _random_bytes("noise.h5"), ("HDF5",)),
    Case("model-random-keras", "load_model", _random_bytes("noise.keras"), ("corrupt",)),
    Case("model-truncated-keras", "load_model", _corrupt_keras, ("corrupt",)),
    Case("model-missing", "load_model", _load_model_path("none.keras", False), ("no such file",)),
    Case("model-wrong-extension", "load_model", _load_model_path("m.txt", True), ("extension",)),
    Case("model-folder", "load_model", _load_model_path("dir.keras", False, folder=True), ("folder",)),
    # train
    Case("train-epochs-negative", "train", _train_epochs(-1)),
    Case("train-epochs-float", "train", _train_epochs(2.5)),
]
