"""File safety, whatever the format: atomic writes through a temporary name, and the clean-up of
temporaries that a killed writer left behind.

Every write goes to a temporary file in the target folder, then is renamed (:func:`atomic_path`),
so an interrupted save never leaves a truncated file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from helpers.volume import VolumeError


def check_exists(path: Path) -> None:
    """Raise VolumeError with the real reason when ``path`` cannot be opened."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VolumeError(path, "is a symbolic link loop") from None
        if err.errno in (errno.EACCES, errno.EPERM):
            raise VolumeError(path, "permission denied") from None
        if path.is_symlink():
            raise VolumeError(path, f"is a broken symbolic link (to {os.readlink(path)})") from None
        raise VolumeError(path, "no such file or directory") from None


# ---------------------------------------------------------------------------- saving


#: Test hook: seconds to sleep between writing a temporary file and renaming it, which
#: widens the window in which a kill leaves a temporary file behind (fault-injection tests).
SLOW_WRITE_ENV = "HELPERS_SLOW_WRITE_S"
_MULTI_SUFFIXES = (".nii.gz", ".weights.h5")


def _temp_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in _MULTI_SUFFIXES if name.endswith(s)), path.suffix)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


#: A temporary of :func:`atomic_path`: ``.<name>.<pid>.<random>.partial<suffix>``.
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.partial")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that crashed :func:`atomic_path` writers left in ``folder``.

    A temporary file is named ``.<name>.<pid>.<random>.partial<suffix>``; it is stale
    when process ``pid`` no longer runs. Files of live processes are left alone, and a
    folder that cannot be listed or written is left as it is. Returns the paths removed.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or ".partial" not in entry.name:
            continue
        match = _PARTIAL.match(entry.name)
        if match is None:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    If the block raises, the temporary file is removed and ``path`` is untouched, so
    an interrupted write never leaves a truncated file. The temporary name keeps the
    extension (``.nii.gz`` and ``.weights.h5`` included) so writers that look at it
    still work, and carries the writer's PID, so temporaries left by a killed process
    are removed on the next write to any file of the same folder
    (:func:`remove_stale_temporaries`). The final file gets the
    usual permissions (0666 less the umask).

    Raises
    ------
    VolumeError
        The folder does not exist or is not writable (the message names ``path``).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise VolumeError(path, f"folder {path.parent} does not exist")
    remove_stale_temporaries(path.parent)
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=f".partial{_temp_suffix(path)}", dir=path.parent
        )
    except PermissionError as err:
        raise VolumeError(path, f"cannot write into folder {path.parent}: permission denied") from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        delay = float(os.environ.get(SLOW_WRITE_ENV, "0") or 0)
        if delay > 0:
            import time

            time.sleep(delay)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_path`; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
