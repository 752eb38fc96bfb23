"""What C and C++ libraries write to a Jupyter kernel's standard streams: to the kernel's log, not
into cell outputs.

ipykernel (6 and later) points file descriptors 1 and 2 at pipes and copies what arrives into
the running cell's output, so that a C library's prints show in the notebook. TensorFlow 2.21
writes "oneDNN custom operations are on" and "Could not find cuda drivers" through absl when
it is imported, before its logging reads ``TF_CPP_MIN_LOG_LEVEL``: in plain Jupyter they land
under the cell that first imports it. :func:`release_fd_capture` gives the descriptors back to
where the kernel's own output goes (the Jupyter server's log or terminal), as the kernel option
``--IPKernelApp.capture_fd_output=False`` does from the start (``helpers.runner``'s kernels,
Binder's ``ipython_kernel_config.py``). What Python code prints still shows in the cell.
``import helpers`` calls it.
"""

from __future__ import annotations

import os
import sys


def release_fd_capture() -> list[str]:
    """Stop ipykernel copying file descriptors 1 and 2 into cell outputs, where it does.

    Returns the names of the streams released (``[]`` outside an ipykernel kernel, in a
    kernel started with ``capture_fd_output=False``, or where ipykernel works otherwise, as
    Colab's may: then nothing is changed).

    Example
    -------
    >>> release_fd_capture()  # not in a Jupyter kernel
    []
    """
    released = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        fd = getattr(stream, "_original_stdstream_fd", None)
        copy = getattr(stream, "_original_stdstream_copy", None)
        if not (type(stream).__module__.startswith("ipykernel") and getattr(stream, "_should_watch", False)):
            continue
        if not (isinstance(fd, int) and isinstance(copy, int)):
            continue
        stream._should_watch = False  # its close() must not wait for the pipe's reader
        os.dup2(copy, fd)  # the descriptor writes where the kernel's own output goes again
        released.append(name)
    return released
