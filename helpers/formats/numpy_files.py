"""NumPy files (``.npy``, ``.npz`` with an affine): headers checked first, never unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.checks import check_affine
from helpers.volume import Volume, VolumeError


def check_numpy_header(path: Path) -> None:
    """Refuse an empty file, or a .npy with an unsupported header, pickled objects or too little data."""
    if path.stat().st_size == 0:
        raise VolumeError(path, "is an empty file (0 bytes): an interrupted copy or write?")
    with open(path, "rb") as f:
        magic = f.read(6)
        if magic.startswith(b"\x93NUMPY"):
            f.seek(0)
            version = np.lib.format.read_magic(f)
            reader = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if reader is None:
                raise VolumeError(path, f"uses .npy format version {version}, which is not supported")
            shape, _, dtype = reader(f)
            needed = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if dtype.hasobject:
                raise VolumeError(
                    path, "holds pickled Python objects, which are never loaded (allow_pickle=False)"
                )
            if path.stat().st_size < needed:
                raise VolumeError(
                    path,
                    f"header declares shape {shape} of {dtype}, more than the file holds: "
                    "corrupt or truncated file",
                )
        elif not magic.startswith(b"PK"):
            raise VolumeError(path, "is not a NumPy .npy or .npz file (no NumPy header)")


def load_numpy(path: Path) -> Volume:
    check_numpy_header(path)
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return Volume(loaded, np.eye(4), "numpy")
    with loaded as npz:
        keys = list(npz.keys())
        key = "array" if "array" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise VolumeError(path, f"holds arrays {keys}; expected one array or one named 'array'")
        array = npz[key]
        affine = npz["affine"] if "affine" in keys else np.eye(4)
    return Volume(array, check_affine(affine, path), "numpy")
