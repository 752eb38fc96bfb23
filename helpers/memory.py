"""Memory pages: dropping those a read of a memory map brought in, and mapping a large array's in
at once instead of one fault at a time."""

from __future__ import annotations

import contextlib
import mmap
from typing import Any

import numpy as np

#: Arrays smaller than this come from :func:`numpy.zeros` in :func:`zeros` (NumPy's own threshold
#: for asking for huge pages is 4 MiB).
POPULATE_MIN_BYTES = 4 << 20


def release_pages(array: Any) -> None:
    """Drop the pages of memory map ``array`` (or a view of one) from this process's resident memory.

    The data stays on disk and in the kernel's page cache; the next read maps it back
    in, at the cost of a page fault. Anything that is not a memory map is left alone,
    as is every array on a system without ``madvise`` (Windows).
    """
    handle = getattr(array, "_mmap", None)
    if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            handle.madvise(mmap.MADV_DONTNEED)


def zeros(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """A C-contiguous array of zeros whose memory the kernel maps in with one call.

    :func:`numpy.zeros` of a large array gets pages that are mapped in when first written,
    one fault each, and asks for 2 MiB huge pages (``madvise``); where Linux's transparent
    huge pages are set to ``defrag=madvise`` (as on the machine measured), each of those
    faults may first compact memory: 1.1-1.4 s more kernel time for ``predict_volume`` on a
    384³ volume of 3 classes, 2-core AMD EPYC (``benchmarks/stitching.py``, docs/benchmarks.md).
    Here an anonymous memory map with ``MAP_POPULATE`` maps all of it at once in small pages:
    use it for an array that will be written whole. Elsewhere (no ``MAP_POPULATE``: macOS,
    Windows), and below :data:`POPULATE_MIN_BYTES`, this is :func:`numpy.zeros`. The memory is
    freed with the last array that views it.

    Parameters
    ----------
    shape : tuple of int
    dtype : NumPy dtype, default float32

    Returns
    -------
    ndarray of ``shape`` and ``dtype``, all zeros, writable.

    Example
    -------
    >>> a = zeros((64, 512, 512), np.float32)
    >>> a.shape, a.dtype, float(a.max()), a.flags.writeable
    ((64, 512, 512), dtype('float32'), 0.0, True)
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    flags = getattr(mmap, "MAP_POPULATE", 0)
    if nbytes < POPULATE_MIN_BYTES or not flags:
        return np.zeros(shape, dtype)
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    except OSError:  # no room for it all at once: NumPy's lazy pages may still fit
        return np.zeros(shape, dtype)
    return np.frombuffer(buffer, dtype).reshape(shape)
