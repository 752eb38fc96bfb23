"""The run folder: an exclusive lock, and the committed state a training resumes from.

A run folder (``run_dir``) holds one training run::

    .lock             the OS lock held while a process trains here (holds its PID)
    log.csv           one row per finished epoch, rewritten atomically after each commit
    best.keras        the best model by the monitored metric, for inference
    complete.json     written once, when the run has finished
    backup/           the resume point while the run is unfinished:
        epoch-NNNN.weights.h5   weights and optimizer state after NNNN epochs
        epoch-NNNN.json         the commit: history, best value and epoch, early stop
        best-NNNN.keras         a best-model candidate waiting to be promoted

Every file is written through :func:`helpers.io.atomic_path`. An epoch counts as
finished when its ``epoch-NNNN.json`` exists (the commit point, written last); the
log and ``best.keras`` are derived from the newest commit, so after a kill at any
moment the next call rebuilds them and resumes exactly where the commit says.
It imports no Keras or TensorFlow (h5py only to check a weights file), so it is cheap to import.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.io import remove_stale_temporaries, write_text_atomic

LOCK_NAME = ".lock"
_GENERATION = re.compile(r"^epoch-(\d{4,})\.json$")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message names the folder."""


class RunLockedError(RunFolderError):
    """Another process is training in this run folder."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive OS lock on ``run_dir`` for the duration of the block.

    The lock is ``fcntl.flock`` on ``run_dir/.lock``: the kernel releases it when the
    process dies, so a killed training never leaves the folder locked. A second
    process fails at once with :class:`RunLockedError` naming the folder and the PID
    that holds it, and writes nothing. On systems without ``fcntl`` (Windows) the
    block runs unlocked.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield run_dir
        return
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"{run_dir} is in use by another training (PID {holder}); wait for it to finish "
                "or choose another run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield run_dir
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass
class Commit:
    """The state after ``epochs_done`` finished epochs, as stored in ``backup/epoch-NNNN.json``."""

    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    monitor: str = "val_mean_iou"
    best: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1)


def backup_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "backup"


def weights_path(run_dir: str | os.PathLike[str], epochs_done: int) -> Path:
    """Where the weights (and optimizer state) after ``epochs_done`` epochs are kept."""
    return backup_dir(run_dir) / f"epoch-{epochs_done:04d}.weights.h5"


def candidate_path(run_dir: str | os.PathLike[str], epoch: int) -> Path:
    """Where the best-model candidate of (0-based) ``epoch`` waits until its epoch is committed."""
    return backup_dir(run_dir) / f"best-{epoch:04d}.keras"


def commits(run_dir: str | os.PathLike[str]) -> list[Commit]:
    """Readable commits in ``run_dir/backup``, newest first; unreadable ones are skipped."""
    found = []
    folder = backup_dir(run_dir)
    if not folder.is_dir():
        return []
    for path in folder.iterdir():
        match = _GENERATION.match(path.name)
        if not match:
            continue
        try:
            data = json.loads(path.read_text())
            commit = Commit(**data)
        except (OSError, ValueError, TypeError):
            continue
        if commit.epochs_done == int(match.group(1)) and weights_path(run_dir, commit.epochs_done).exists():
            found.append(commit)
    return sorted(found, key=lambda c: c.epochs_done, reverse=True)


def weights_readable(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` opens as a complete HDF5 file (a torn or truncated one does not)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return len(f.keys()) > 0
    except Exception:  # h5py raises OSError and others for damaged files
        return False


def latest_commit(run_dir: str | os.PathLike[str]) -> Commit | None:
    """The newest commit whose weights file is readable, falling back to older ones; None if none."""
    return next((c for c in commits(run_dir) if weights_readable(weights_path(run_dir, c.epochs_done))), None)


def read_complete(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``complete.json`` record of a finished run, or None (also for an unreadable file)."""
    path = Path(run_dir) / "complete.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "epochs" in data else None


def write_commit(run_dir: str | os.PathLike[str], commit: Commit) -> Path:
    """Write the commit record (after its weights file): from now on the epoch counts as finished."""
    return write_text_atomic(backup_dir(run_dir) / f"epoch-{commit.epochs_done:04d}.json", commit.to_json())


def log_text(history: Sequence[dict[str, float]]) -> str:
    """CSV text of ``history`` rows: ``epoch`` first, then the other columns sorted (as Keras' CSVLogger)."""
    keys = sorted({k for row in history for k in row if k != "epoch"})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for row in history:
        writer.writerow([int(row["epoch"]), *(row.get(k, "") for k in keys)])
    return buf.getvalue()


def read_log(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """The CSV training log as {column: values}, one value per finished epoch."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    return {k: [float(r[k]) if k != "epoch" else int(r[k]) for r in rows] for k in rows[0]}


def settle(run_dir: str | os.PathLike[str], commit: Commit | None) -> None:
    """Make the derived files agree with ``commit`` (None: a fresh start). Idempotent.

    Promotes the committed best candidate to ``best.keras``, rewrites ``log.csv`` from
    the commit's history, and removes older generations, uncommitted candidates and
    stale temporary files. Call it only while holding :func:`run_lock`.
    """
    run_dir = Path(run_dir)
    folder = backup_dir(run_dir)
    if commit is None:
        shutil.rmtree(folder, ignore_errors=True)
        for name in ("best.keras", "log.csv"):
            (run_dir / name).unlink(missing_ok=True)
    else:
        if commit.best_epoch is not None:
            candidate = candidate_path(run_dir, commit.best_epoch)
            if candidate.exists():
                os.replace(candidate, run_dir / "best.keras")
        write_text_atomic(run_dir / "log.csv", log_text(commit.history))
        keep = {
            f"epoch-{commit.epochs_done:04d}.json",
            weights_path(run_dir, commit.epochs_done).name,
        }
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.name not in keep:
                path.unlink(missing_ok=True)
    for name in ("best.keras", "log.csv", "complete.json"):
        remove_stale_temporaries(run_dir / name)


def committed_epochs(run_dir: str | os.PathLike[str]) -> int:
    """How many epochs of ``run_dir`` are finished for good (complete or committed)."""
    done = read_complete(run_dir)
    if done is not None:
        return int(done.get("epochs_run", done["epochs"]))
    found = commits(run_dir)
    return found[0].epochs_done if found else 0


def leftover_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Temporary files (``*.partial*``) anywhere under ``run_dir``: none after a clean resume."""
    return sorted(p for p in Path(run_dir).rglob(".*.partial*"))
