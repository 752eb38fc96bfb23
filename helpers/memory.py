"""Memory management for memory-mapped arrays: dropping the pages a read brought in."""

from __future__ import annotations

import contextlib
import mmap
from typing import Any


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
