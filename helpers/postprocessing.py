"""Post-processing of label maps: keep the largest connected component of chosen classes.

nnU-Net tries this on its validation folds and keeps it where it raises Dice: an organ
is one connected object, so any island of its label elsewhere is a false positive. It
is the wrong prior for a rock, where every grain and pore is its own component; the
course measures both (notebook 06) and leaves it off by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from helpers.checks import check_volume


def keep_largest_component(
    labels: np.ndarray, classes: Iterable[int], connectivity: int = 1, background: int = 0
) -> np.ndarray:
    """Keep only the largest connected component of each class in ``classes``.

    Parameters
    ----------
    labels : ndarray (Z, Y, X), integer
        A label map, such as ``predict_volume(..., output="labels")``.
    classes : iterable of int
        The classes to clean; every other class is left as it is.
    connectivity : 1, 2 or 3
        Neighbours that touch by a face (1, 6-connected), an edge (2) or a corner (3).
    background : int
        The label that removed voxels get.

    Returns
    -------
    ndarray
        A new label map of the same shape and dtype.

    Example
    -------
    >>> lab = np.zeros((1, 1, 7), np.uint8)
    >>> lab[0, 0, [0, 2, 3, 4, 6]] = 1
    >>> keep_largest_component(lab, [1])[0, 0].tolist()
    [0, 0, 1, 1, 1, 0, 0]
    """
    labels = check_volume(labels, "labels")
    if labels.ndim != 3 or labels.dtype.kind not in "iub":
        raise ValueError(
            f"labels must be a 3-D integer label map, got {labels.dtype} of shape {labels.shape}"
        )
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    try:
        chosen = sorted({int(c) for c in classes})
    except (TypeError, ValueError):
        raise ValueError(f"classes must be class ids (integers), got {classes!r}") from None
    if background in chosen:
        raise ValueError(f"classes must not include the background label {background}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    result = labels.copy()
    for c in chosen:
        components, n = ndimage.label(labels == c, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        result[(components != 0) & (components != int(sizes.argmax()))] = background
    return result
