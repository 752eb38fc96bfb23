"""Train / validation / test splits that never leak, saved with the run.

- Several cases: a seeded split by case (:func:`split_cases`), so no case is in two parts.
- One volume: three disjoint slabs along an axis (:func:`split_slabs`).

Validation picks the checkpoint; test is scored once, at the end. A split is saved
as JSON in the run folder (:func:`save_split`) and read back on resume
(:func:`load_or_make_split`), so a resumed or re-run training sees the same parts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from helpers.files import write_text_atomic

PARTS = ("train", "val", "test")
#: Default shares of (train, validation, test).
FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_FILE = "split.json"


class SplitError(ValueError):
    """A split that cannot be made or does not fit the data; the message says why."""


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise SplitError(
            f"fractions must be 3 numbers > 0 summing to 1 (train, val, test), not {fractions!r}"
        )
    return values  # type: ignore[return-value]


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Whole counts for each part, each at least 1, summing to ``n``."""
    val = max(1, int(round(n * fractions[1])))
    test = max(1, int(round(n * fractions[2])))
    while n - val - test < 1 and max(val, test) > 1:  # rounding up both left training nothing
        if val >= test:
            val -= 1
        else:
            test -= 1
    return n - val - test, val, test


def split_cases(
    names: Sequence[str], seed: int = 0, fractions: Sequence[float] = FRACTIONS
) -> dict[str, list[str]]:
    """Shuffle case ``names`` with ``seed`` and cut them into train / val / test.

    Each part gets at least one case; the same names and seed give the same split.
    Needs at least 3 cases.

    Example
    -------
    >>> s = split_cases([f"case{i}" for i in range(10)], seed=1)
    >>> [len(s[p]) for p in ("train", "val", "test")]
    [6, 2, 2]
    """
    fractions = _check_fractions(fractions)
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise SplitError("case names must be unique")
    if len(names) < 3:
        raise SplitError(
            f"a split by case needs 3 or more cases, got {len(names)}; split one volume by slabs"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [sorted(names)[i] for i in order]
    n_train, n_val, _ = _counts(len(names), fractions)
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def split_slabs(
    shape: Sequence[int], axis: int = 0, fractions: Sequence[float] = FRACTIONS, min_size: int = 1
) -> dict[str, list[int]]:
    """Three disjoint slabs of one volume along ``axis``: ``{part: [start, stop]}`` in voxels.

    Train comes first, then validation, then test at the far end. Each slab has at
    least ``min_size`` voxels along the axis.
    """
    fractions = _check_fractions(fractions)
    n = int(shape[axis])
    sizes = [max(min_size, int(round(n * f))) for f in fractions[1:]]
    n_train = n - sum(sizes)
    if n_train < min_size:
        raise SplitError(f"axis {axis} of length {n} is too short for three slabs of {min_size}+ voxels")
    bounds = [0, n_train, n_train + sizes[0], n]
    return {part: [bounds[i], bounds[i + 1]] for i, part in enumerate(PARTS)}


def describe_split(split: dict[str, Any]) -> str:
    """A split in one line of words: the cases of each part, or each part's slab and its axis.

    Example
    -------
    >>> describe_split({"kind": "slabs", "axis": 0, "train": [0, 6], "val": [6, 8], "test": [8, 10]})
    'one volume cut into slabs along z: train z 0-5, val z 6-7, test z 8-9'
    """
    if split["kind"] == "cases":
        return "by case: " + "; ".join(f"{p} {', '.join(split[p])}" for p in PARTS)
    axis = "zyx"[int(split["axis"])]
    if "cases" not in split:
        bounds = ", ".join(f"{p} {axis} {split[p][0]}-{split[p][1] - 1}" for p in PARTS)
        return f"one volume cut into slabs along {axis}: {bounds}"
    per_case = "; ".join(
        f"{name}: " + ", ".join(f"{p} {axis} {b[p][0]}-{b[p][1] - 1}" for p in PARTS)
        for name, b in split["cases"].items()
    )
    return f"too few cases to split by case, so each is cut into slabs along {axis} ({per_case})"


def slab_index(bounds: Sequence[int], axis: int, ndim: int = 3) -> tuple[slice, ...]:
    """Index tuple selecting the slab ``[start, stop]`` along ``axis``."""
    index = [slice(None)] * ndim
    index[axis] = slice(int(bounds[0]), int(bounds[1]))
    return tuple(index)


def save_split(run_dir: str | os.PathLike[str], split: dict[str, Any]) -> Path:
    """Write ``split`` as ``run_dir/split.json`` (atomically)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_text_atomic(Path(run_dir) / SPLIT_FILE, json.dumps(split, indent=1))


def load_or_make_split(run_dir: str | os.PathLike[str], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The split saved in ``run_dir``, or ``make()``'s, saved there first. A resumed run reuses it.

    Raises SplitError if the saved split differs from what ``make()`` gives now (the
    data or the split settings changed under an existing run).
    """
    path = Path(run_dir) / SPLIT_FILE
    fresh = make()
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError as err:
            raise SplitError(f"{path} is not valid JSON ({err}); delete it to make a new split") from None
        if saved != json.loads(json.dumps(fresh)):
            raise SplitError(
                f"{path} holds another split than this data and these settings give; "
                "use a new run_dir, or delete the run to start over"
            )
        return saved
    save_split(run_dir, fresh)
    return fresh
