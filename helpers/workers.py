"""A fixed team of threads that runs one function once per thread index, and waits for all.

The stitcher (:mod:`helpers.stitching`) and the window cutter of
:func:`helpers.inference.predict_volume` split their NumPy work this way: each thread takes a
share that no other thread writes, and NumPy releases the GIL in the heavy calls.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class Workers:
    """``n`` threads that run a function once per thread index, the last on the calling thread.

    Example
    -------
    >>> team = Workers(2)
    >>> seen = []
    >>> team.run(seen.append)
    >>> sorted(seen)
    [0, 1]
    >>> team.close()
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool = ThreadPoolExecutor(n - 1) if n > 1 else None

    def run(self, fn: Callable[[int], None]) -> None:
        """Run ``fn(t)`` for t in 0..n-1 and wait for all; the first error is raised."""
        if self.pool is None:
            fn(0)
            return
        futures = [self.pool.submit(fn, t) for t in range(self.n - 1)]
        try:
            fn(self.n - 1)
        finally:
            for f in futures:
                f.result()

    def close(self) -> None:
        """Stop the threads (after the work they were given)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
