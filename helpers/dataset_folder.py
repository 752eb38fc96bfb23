"""Reading a dataset folder's layout: ``dataset.json`` (the course's form, MSD's, nnU-Net v2's),
``imagesTr/``, ``labelsTr/``, ``imagesTs/``, and the channel files of each case.

The first stage of :func:`helpers.datasets.open_dataset`, as nnU-Net's
``get_filenames_of_train_images_and_targets``: no voxel is read here except where a
format keeps its geometry only in its data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.geometry import ras_spacing
from helpers.io import load_volume
from helpers.preprocessing import MODALITIES
from helpers.volume import Volume, VolumeError

# ------------------------------------------------------------------ datasets in folders


class DatasetError(VolumeError):
    """A dataset folder or ``dataset.json`` that cannot be used; the message names the file or case."""


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy", ".tif", ".tiff")


def read_spec(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise DatasetError(path, "no dataset.json: a dataset folder needs one (name, modality, labels)")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise DatasetError(path, f"is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DatasetError(path, "must hold a JSON object")
    return data


#: nnU-Net v2's ``dataset.json``: the keys it requires, and the optional keys it documents that the
#: course reads or ignores. ``regions_class_order`` (region training) is refused by name.
NNUNET_REQUIRED = ("channel_names", "labels", "numTraining", "file_ending")
NNUNET_OPTIONAL = (
    "name",
    "description",
    "reference",
    "licence",
    "license",
    "release",
    "overwrite_image_reader_writer",
)
#: A folder's name as nnU-Net and the Decathlon write it: ``Dataset042_Brain``, ``Task09_Spleen``.
FOLDER_NAME = re.compile(r"^(?:Dataset\d{3}|Task\d{2,3})_(?P<name>.+)$")


def dataset_name(spec: dict[str, Any], root: Path, path: Path) -> str:
    """The dataset's name: ``spec["name"]``, else the folder's (``Dataset042_Brain`` -> ``Brain``).

    nnU-Net v2 requires only ``channel_names``, ``labels``, ``numTraining`` and
    ``file_ending``; a ``dataset.json`` in that form is checked for exactly those.
    """
    if "channel_names" in spec:
        missing = [k for k in NNUNET_REQUIRED if k not in spec]
        if missing:
            raise DatasetError(
                path, f"lacks the key(s) {missing}, which nnU-Net v2 requires beside 'channel_names'"
            )
        if "regions_class_order" in spec:
            raise DatasetError(
                path, "has 'regions_class_order': nnU-Net region training, which this course does not do"
            )
        count = spec["numTraining"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise DatasetError(path, f"'numTraining' must be a whole number >= 1, got {count!r}")
        ending = spec["file_ending"]
        if not isinstance(ending, str) or not ending.startswith("."):
            raise DatasetError(path, f"'file_ending' must be a suffix such as '.nii.gz', got {ending!r}")
    name = spec.get("name")
    if name is None:
        match = FOLDER_NAME.match(root.name)
        return match["name"] if match else root.name
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(path, f"'name' must be a non-empty string, got {name!r}")
    return name


def check_training_count(spec: dict[str, Any], found: int, path: Path) -> None:
    """nnU-Net v2's ``numTraining`` must count the labelled cases found (as nnU-Net checks it)."""
    count = spec.get("numTraining")
    if "channel_names" in spec and count != found:
        raise DatasetError(
            path, f"'numTraining' is {count}, but imagesTr/ and labelsTr/ hold {found} case(s)"
        )


#: Channel names read as MR (a per-case z-score either way; the name says what the scan is).
MR_NAMES = frozenset({"MR", "MRI", "T1", "T1W", "T1C", "T1CE", "T1GD", "T2", "T2W", "FLAIR", "PD", "DWI"})


def read_channels(spec: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    """(name, modality) of each image channel, in order; modality is "CT", "MR" or "other".

    The course's own ``modality`` string must name one of :data:`MODALITIES` (one
    channel). The public forms, MSD's ``modality`` and nnU-Net v2's ``channel_names``
    ({"0": "T2", "1": "ADC"}), are free text read as nnU-Net reads it: "CT" selects the
    CT scheme, anything else ("MRI", "T2", "noNorm"...) a per-case z-score; MR sequence names
    (:data:`MR_NAMES`: "FLAIR", "T1c"...) are reported as MR, the rest (ADC, "noNorm") as other.
    """
    raw = spec.get("channel_names", spec.get("modality"))
    if isinstance(raw, dict) and raw:
        try:
            order = sorted(raw, key=int)
        except ValueError:
            raise DatasetError(path, f"channel keys must be 0, 1, ...; got {list(raw)}") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise DatasetError(path, f"channel keys must be 0, 1, ... without gaps; got {list(raw)}")
        out = []
        for key in order:
            text = str(raw[key]).strip()
            modality = "CT" if text.upper() == "CT" else "MR" if text.upper() in MR_NAMES else "other"
            out.append((text, modality))
        return out
    if raw is None:
        raise DatasetError(path, 'lacks the key \'modality\' ("CT", "MR" or "other")')
    for m in MODALITIES:
        if str(raw).lower() == m.lower():
            return [("image", m)]
    raise DatasetError(path, f"modality {raw!r} is unknown; use one of {MODALITIES}")


def read_labels(spec: dict[str, Any], path: Path) -> tuple[tuple[str, ...], list[list[int]]]:
    """Class names and the stored ids merged into each class; class 0 holds id 0 (background)."""
    raw = spec.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(path, "lacks 'labels', a mapping of class name to label id (or list of ids)")
    regions = [k for k, v in raw.items() if isinstance(v, list)] if "channel_names" in spec else []
    if regions:
        raise DatasetError(
            path,
            f"labels {regions} are nnU-Net regions (lists of ids that overlap, BraTS-style), which this "
            "course does not train; give each class one id, or use the course's own dataset.json form, "
            "where a list merges ids into one class",
        )
    if all(str(k).isdigit() for k in raw) and all(isinstance(v, str) for v in raw.values()):
        raw = {v: int(k) for k, v in raw.items()}  # Decathlon style: {"0": "background", ...}
    names, ids = [], []
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise DatasetError(path, f"label {name!r} must be an id >= 0 or a list of them, got {value!r}")
        names.append(str(name))
        ids.append([int(v) for v in values])
    flat = [v for group in ids for v in group]
    if len(set(flat)) != len(flat):
        raise DatasetError(path, f"a label id is listed under two classes: {raw}")
    background = [i for i, group in enumerate(ids) if 0 in group]
    if background:
        order = background + [i for i in range(len(ids)) if i != background[0]]
        names, ids = [names[i] for i in order], [ids[i] for i in order]
    else:
        names, ids = ["background", *names], [[0], *ids]
    if len(names) < 2:
        raise DatasetError(path, "labels must name at least one class besides the background")
    return tuple(names), ids


def check_channel_count(
    volume: Volume, expected: int, who: str = "the model takes", names: Sequence[str] = ()
) -> Volume:
    """``volume`` if it has ``expected`` image channels (a 4-D array of one channel is made 3-D).

    Raises
    ------
    VolumeError
        Another number of channels; the message names the file and both counts.
    """
    if volume.array.ndim == 4 and volume.array.shape[3] == 1:
        volume.array = volume.array[..., 0]
    found = volume.array.shape[3] if volume.array.ndim == 4 else 1
    if found != expected:
        listing = f" ({', '.join(names)})" if names else ""
        raise VolumeError(volume.path, f"has {found} image channel(s), but {who} {expected}{listing}")
    return volume


def volume_stem(path: Path) -> str:
    """A file's name less its volume suffix (``.nii.gz``, ``.npz``...); a folder's name."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


#: An nnU-Net image name: the case id, then ``_`` and a four-digit channel index.
CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def volume_files(folder: Path) -> list[Path]:
    """Volume files and DICOM folders in ``folder``, without hidden files (macOS ``._`` copies)."""
    return [
        p
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES))
    ]


def image_entries(folder: Path, cases: set[str] | None = None) -> dict[str, list[Path]]:
    """Image files and DICOM folders in ``folder`` by case id, each case's channels in order.

    An image's trailing ``_NNNN`` is its channel index when stripping it gives a case
    of ``cases`` (the label maps), or, without ``cases``, when every image of the folder
    has one (nnU-Net's rule); otherwise it is part of the id (MSD's ``spleen_2``, one
    file per case, several channels on a fourth axis).
    """
    paths = volume_files(folder)
    stems = {p: volume_stem(p) for p in paths}
    every = all(CHANNEL_PATTERN.match(s) for s in stems.values())
    found: dict[str, dict[int, Path]] = {}
    for path, stem in stems.items():
        match = CHANNEL_PATTERN.match(stem)
        suffixed = match is not None and (match["case"] in cases if cases is not None else every)
        case, channel = (match["case"], int(match["channel"])) if suffixed else (stem, 0)  # type: ignore[index]
        if channel in found.setdefault(case, {}):
            raise DatasetError(path, f"names case {case!r} twice (also {found[case][channel].name})")
        found[case][channel] = path
    out = {}
    for case, channels in found.items():
        missing = sorted(set(range(max(channels) + 1)) - set(channels))
        if missing:
            first = channels[min(channels)]
            raise DatasetError(
                first, f"case {case!r} lacks image channel(s) {[f'_{c:04d}' for c in missing]}"
            )
        out[case] = [channels[c] for c in sorted(channels)]
    return out


def label_entries(folder: Path) -> dict[str, Path]:
    """Label maps in ``folder`` by case id: a label file's name is its case id (``amos_0507``)."""
    found: dict[str, Path] = {}
    for path in volume_files(folder):
        case = volume_stem(path)
        if case in found:
            raise DatasetError(path, f"names case {case!r} twice (also {found[case].name})")
        found[case] = path
    return found


def load_channels(paths: Sequence[str | os.PathLike[str]]) -> Volume:
    """One scan from its channel files (``case_0000``, ``case_0001``...) or one file, as (Z, Y, X[, C]).

    Every channel must lie on the first one's grid (same shape and affine).

    Raises
    ------
    VolumeError
        A channel on another grid, or a channel file that itself holds several channels;
        the message names the file.
    """
    paths = [Path(p) for p in paths]
    first = load_volume(paths[0])
    if len(paths) == 1:
        return first
    arrays = [first.array]
    for path in paths[1:]:
        vol = load_volume(path)
        if vol.array.ndim != 3 or first.array.ndim != 3:
            raise VolumeError(path, "a channel file must hold one 3-D channel")
        if vol.shape != first.shape or not np.allclose(vol.affine, first.affine, atol=1e-3):
            raise VolumeError(
                path,
                f"lies on another grid (shape {vol.shape}) than channel 0, {paths[0].name} (shape "
                f"{first.shape}); every channel of a case must share one grid",
            )
        arrays.append(vol.array)
    first.array = np.stack(arrays, axis=-1)
    return first


def listed_entries(
    spec: dict[str, Any], key: str, root: Path, spec_path: Path
) -> list[dict[str, Path]] | None:
    """MSD's ``training`` ([{"image", "label"}]) or ``test`` ([paths]) list as paths under ``root``."""
    items = spec.get(key)
    if not isinstance(items, list) or not items:
        return None
    out = []
    for item in items:
        entry = item if isinstance(item, dict) else {"image": item}
        paths = {}
        for role, rel in entry.items():
            if role not in ("image", "label"):
                continue
            path = (root / str(rel)).resolve()
            if not path.exists():
                raise DatasetError(spec_path, f"'{key}' lists {rel!r}, but {path} does not exist")
            paths[role] = path
        out.append(paths)
    return out


def native_spacing(path: str, case: str) -> tuple[float, float, float]:
    """Case ``case``'s spacing (RAS, Z, Y, X mm) from its scan ``path``; a NIfTI's from its header alone."""
    if str(path).lower().endswith((".nii", ".nii.gz")) and Path(path).is_file():
        import nibabel as nib

        try:
            return ras_spacing(np.asarray(nib.load(path).affine, dtype=np.float64))
        except Exception as err:  # nibabel raises many types for damaged headers
            reason = f"corrupt or truncated file ({type(err).__name__}: {err})"
            raise DatasetError(path, f"case {case!r}: {reason}") from None
    try:
        return ras_spacing(load_volume(path).affine)
    except VolumeError as err:
        raise DatasetError(err.path, f"case {case!r}: {err.reason}") from None


def folder_fingerprint(spec: dict[str, Any], files: Sequence[Path]) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for f in files:
        size = sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) if f.is_dir() else f.stat().st_size
        digest.update(f"{f.name}:{size}".encode())
    return digest.hexdigest()[:16]


def training_sources(
    spec: dict[str, Any], root: Path, spec_path: Path
) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """The labelled cases of a folder: {case: its channel files} and {case: its label map}.

    MSD's ``training`` list is followed where it names every label map; otherwise the files of
    ``imagesTr/`` and ``labelsTr/`` are matched by case id. A case with an image and no label
    map, or the reverse, an empty ``imagesTr/`` and a wrong ``numTraining`` are refused.
    """
    for sub in ("imagesTr", "labelsTr"):
        if not (root / sub).is_dir():
            raise DatasetError(root / sub, "folder is missing; a dataset needs imagesTr/ and labelsTr/")
    listed = listed_entries(spec, "training", root, spec_path)
    if listed is not None and all("label" in e for e in listed):
        label_files = {volume_stem(e["label"]): e["label"] for e in listed}
        images = {volume_stem(e["label"]): [e["image"]] for e in listed}
    else:
        label_files = label_entries(root / "labelsTr")
        images = image_entries(root / "imagesTr", set(label_files))
    for stem in sorted(set(images) - set(label_files)):
        raise DatasetError(images[stem][0], f"case {stem!r} has an image but no label map in labelsTr/")
    for stem in sorted(set(label_files) - set(images)):
        raise DatasetError(label_files[stem], f"case {stem!r} has a label map but no image in imagesTr/")
    if not images:
        raise DatasetError(root / "imagesTr", "holds no images")
    check_training_count(spec, len(images), spec_path)
    return images, label_files


def unlabelled_scans(spec: dict[str, Any], root: Path, spec_path: Path) -> list[str]:
    """The scans to segment after training: MSD's ``test`` list, else every channel file of ``imagesTs/``."""
    tests = listed_entries(spec, "test", root, spec_path)
    if tests is not None:
        return [str(e["image"]) for e in tests if "image" in e]
    if (root / "imagesTs").is_dir():
        return [str(p) for paths in image_entries(root / "imagesTs").values() for p in paths]
    return []


def check_declared_ids_present(
    present: set[int], class_names: Sequence[str], label_ids: Sequence[Sequence[int]], path: Path
) -> None:
    """Refuse a class of ``dataset.json`` whose ids no label map holds (a typo in ``labels``)."""
    for cls, group in zip(class_names, label_ids, strict=True):
        missing = [i for i in group if i not in present and i != 0]
        if missing:
            raise DatasetError(
                path, f"label {cls!r} lists id(s) {missing} that no label map in labelsTr/ contains"
            )
