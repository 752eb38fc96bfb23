"""The run folder: an exclusive lock, and the committed state a training resumes from.

A run folder (``run_dir``) holds one training run::

    .lock             the OS lock held while a process trains here (holds its PID)
    log.csv           one row per finished epoch, rewritten atomically after each commit
    best.keras        the best model by the monitored metric, for inference
    training.json     seconds per epoch of the call that finished the run, and its record
    complete.json     written once, when the run has finished (after training.json)
    backup/           the resume point while the run is unfinished:
        epoch-NNNN.json         a commit: history, best value and epoch, early stop, resume point
        epoch-NNNN.weights.h5   weights and optimizer state after NNNN epochs (a state commit)
        best-NNNN.keras         a best-model candidate (``best.keras`` is a hard link to one)

Every file is written through :func:`helpers.io.atomic_path`. An epoch counts as
finished when its ``epoch-NNNN.json`` exists (the commit point, written last), and
``log.csv`` and ``best.keras`` are derived from the newest commit. The 512 MB of
weights and optimizer state are saved only every few epochs (a *state commit*;
:class:`helpers.training.RunCheckpoint` says when), so each commit names the state
commit it would resume from. A best-model candidate is written with state commits and
at the end, so ``best.keras`` may lag the log by the epochs since the last of them.
After a kill the next call rolls the log and ``best.keras`` back to that state commit
and trains again from there: it loses at most the epochs since, never a finished run.

Everything that decides what a run folder holds, what to keep and where to resume is
here, behind one call: :func:`run_status` (fresh, resume or complete, with a message
saying what it found and what it discards). The training loop
(:mod:`helpers.training`) only trains, commits each epoch (:func:`write_commit`,
:func:`settle`) and ends the run with :func:`finish_run`.
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
from typing import Any, Literal

from helpers.files import atomic_path, remove_stale_temporaries, write_text_atomic

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
    """The state after ``epochs_done`` finished epochs, as stored in ``backup/epoch-NNNN.json``.

    ``resume_from`` is the ``epochs_done`` of the newest state commit at or before this
    one (None in records written before state commits were spaced out: every commit
    then held its weights). ``timing`` is what ``training.json`` will hold if this commit
    ends the run: the seconds, epochs and seconds per epoch the call that wrote it has
    trained so far, with that call's record (None in records written before it was kept
    here, or for a call that trained nothing).
    """

    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    monitor: str = "val_mean_iou"
    best: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    resume_from: int | None = None
    timing: dict[str, Any] | None = None

    @property
    def is_state(self) -> bool:
        """Whether this commit saved the weights and optimizer state."""
        return self.resume_from is None or self.resume_from == self.epochs_done

    def finishes(self, epochs: int) -> bool:
        """Whether this commit ends a run of ``epochs`` epochs (all of them, or an early stop)."""
        return self.epochs_done >= epochs or self.stopped_early

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
    """Readable commits in ``run_dir/backup``, newest first; unreadable ones are skipped.

    A state commit counts only with its weights file.
    """
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
        if commit.epochs_done != int(match.group(1)):
            continue
        if not commit.is_state or weights_path(run_dir, commit.epochs_done).exists():
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
    """The newest commit, state or not (what the log and ``best.keras`` show); None if none."""
    found = commits(run_dir)
    return found[0] if found else None


def resume_point(run_dir: str | os.PathLike[str]) -> Commit | None:
    """The newest state commit whose weights file is readable, where a training resumes; None if none."""
    return next(
        (
            c
            for c in commits(run_dir)
            if c.is_state and weights_readable(weights_path(run_dir, c.epochs_done))
        ),
        None,
    )


#: What ``complete.json`` must hold, and of which types.
_COMPLETE_FIELDS = {"epochs": int, "epochs_run": int, "monitor": str}


def read_complete(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``complete.json`` record of a finished run, or None when the run has not finished.

    Raises
    ------
    RunFolderError
        ``complete.json`` exists but cannot be read, is not JSON or lacks its fields
        (a full disk, a hand edit). Nothing is deleted: the message says what to do.
    """
    path = Path(run_dir) / "complete.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise RunFolderError(f"{path} cannot be read ({err.strerror})") from None
    try:
        data = json.loads(text)
        problem = None if isinstance(data, dict) else f"holds a {type(data).__name__}, not a record"
    except ValueError as err:
        data, problem = None, "is empty" if not text.strip() else f"is not valid JSON ({err})"
    if problem is None:
        wrong = [k for k, kind in _COMPLETE_FIELDS.items() if not isinstance(data.get(k), kind)]
        problem = f"lacks valid fields {wrong}" if wrong else None
    if problem is not None:
        raise RunFolderError(
            f"{path} {problem}: it marks a finished run, whose best.keras and log.csv are kept untouched. "
            f"Restore complete.json (fields {sorted(_COMPLETE_FIELDS)}, for example from log.csv), or "
            f"delete {run_dir} (or choose another run_dir) to train again"
        )
    return data


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


def settle(run_dir: str | os.PathLike[str], commit: Commit | None, resume: Commit | None = None) -> None:
    """Make the derived files agree with ``commit`` (None: a fresh start). Idempotent.

    Links ``best.keras`` to the committed best candidate, rewrites ``log.csv`` from
    the commit's history, and removes what neither ``commit`` nor the state commit
    ``resume`` it would resume from needs (default: ``commit`` itself), uncommitted
    candidates and stale temporary files. Call it only while holding :func:`run_lock`.
    """
    run_dir = Path(run_dir)
    folder = backup_dir(run_dir)
    if commit is None:
        shutil.rmtree(folder, ignore_errors=True)
        for name in ("best.keras", "log.csv"):
            (run_dir / name).unlink(missing_ok=True)
    else:
        resume = resume or commit
        if commit.best_epoch is not None:
            _link_best(candidate_path(run_dir, commit.best_epoch), run_dir / "best.keras")
        write_text_atomic(run_dir / "log.csv", log_text(commit.history))
        keep = {weights_path(run_dir, resume.epochs_done).name}
        for c in (commit, resume):
            keep.add(f"epoch-{c.epochs_done:04d}.json")
            if c.best_epoch is not None:
                keep.add(candidate_path(run_dir, c.best_epoch).name)
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.name not in keep:
                path.unlink(missing_ok=True)
    remove_stale_temporaries(run_dir)


def _link_best(candidate: Path, best: Path) -> None:
    """Make ``best`` the file ``candidate`` is, by an atomic hard link (a copy where links fail).

    The candidate stays in ``backup/`` so that a rollback to an older state commit
    can restore its ``best.keras``; the link costs no disk space.
    """
    if not candidate.exists() or (best.exists() and os.path.samefile(candidate, best)):
        return
    with atomic_path(best) as tmp:
        tmp.unlink()
        try:
            os.link(candidate, tmp)
        except OSError:  # a file system without hard links
            shutil.copy2(candidate, tmp)


def orphaned_results(run_dir: str | os.PathLike[str]) -> list[str]:
    """``best.keras`` and ``log.csv`` in ``run_dir`` with neither ``complete.json`` nor a commit.

    Training never leaves them so; they belong to a run whose records were removed by
    hand, and are never deleted without being asked.
    """
    run_dir = Path(run_dir)
    if read_complete(run_dir) is not None or commits(run_dir):
        return []
    return [name for name in ("best.keras", "log.csv") if (run_dir / name).exists()]


def committed_epochs(run_dir: str | os.PathLike[str]) -> int:
    """How many epochs of ``run_dir`` are finished for good: complete, or saved in a state commit."""
    done = read_complete(run_dir)
    if done is not None:
        return int(done.get("epochs_run", done["epochs"]))
    point = resume_point(run_dir)
    return point.epochs_done if point else 0


def leftover_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Temporary files (``*.partial*``) anywhere under ``run_dir``: none after a clean resume."""
    return sorted(p for p in Path(run_dir).rglob(".*.partial*"))


def finish_run(run_dir: str | os.PathLike[str], commit: Commit, epochs: int) -> dict[str, Any] | None:
    """End a run of ``epochs`` epochs whose newest commit is ``commit``, if that commit ends it.

    Writes ``training.json`` (``commit.timing``) and then ``complete.json``, and only then
    removes the resume point and any temporary file (:func:`settle_complete`): a kill
    anywhere in between leaves a folder that :func:`run_status` finishes again, so a
    complete run always has its record. Returns the ``complete.json`` record, or None
    when ``commit`` does not end the run (nothing is written). Call it only while
    holding :func:`run_lock`.
    """
    if not commit.finishes(epochs):
        return None
    run_dir = Path(run_dir)
    settle(run_dir, commit, resume_point(run_dir) or commit)  # the resume point stays till complete.json
    if commit.timing is not None:
        write_text_atomic(run_dir / "training.json", json.dumps(commit.timing, indent=1))
    done = {
        "epochs": epochs,
        "epochs_run": commit.epochs_done,
        "stopped_early": commit.stopped_early,
        "best": commit.best,
        "best_epoch": commit.best_epoch,
        "monitor": commit.monitor,
    }
    write_text_atomic(run_dir / "complete.json", json.dumps(done, indent=1))
    settle_complete(run_dir)
    return done


def settle_complete(run_dir: str | os.PathLike[str]) -> None:
    """After ``complete.json``: drop the resume point and any temporary file left by a crash."""
    shutil.rmtree(backup_dir(run_dir), ignore_errors=True)
    for tmp in leftover_temporaries(run_dir):
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunStatus:
    """What :func:`run_status` found in a run folder, and what a training there does next.

    ``kind`` is ``"fresh"`` (train from epoch 0), ``"resume"`` (load the weights of
    ``commit``, a state commit, and train on from ``commit.epochs_done``) or
    ``"complete"`` (train nothing; ``done`` is the ``complete.json`` record).
    ``message`` says in a sentence what was found and what was discarded ("" for an
    empty folder).
    """

    kind: Literal["fresh", "resume", "complete"]
    commit: Commit | None = None
    done: dict[str, Any] | None = None
    message: str = ""

    @property
    def initial_epoch(self) -> int:
        """The first epoch (0-based) still to train; for a complete run, the epochs it ran."""
        if self.done is not None:
            return int(self.done.get("epochs_run", self.done["epochs"]))
        return self.commit.epochs_done if self.commit else 0


def run_status(run_dir: str | os.PathLike[str], epochs: int) -> RunStatus:
    """Decide how a training of ``epochs`` epochs goes on in ``run_dir``, and tidy the folder for it.

    The one place that reads a run folder's state. In order:

    1. ``complete.json`` exists: the run is complete (a damaged one raises).
    2. The newest commit ends the run (all ``epochs`` logged, or an early stop) but
       ``complete.json`` is missing (a kill while the run was ending): the run is
       finished now (:func:`finish_run`, ``training.json`` included) and complete.
    3. ``best.keras`` or ``log.csv`` without any record: raise, deleting nothing.
    4. Otherwise roll back to the newest readable state commit (:func:`resume_point`)
       and resume from it, or start fresh when there is none. The log and ``best.keras``
       follow (:func:`settle`); epochs logged after that point are discarded, and the
       message says how many.

    A complete run is never trained again: asking it for more epochs than it ran
    raises. Call it only while holding :func:`run_lock`.

    Raises
    ------
    RunFolderError
        A damaged ``complete.json``, a completed run asked for more epochs, or results
        without any record (nothing is deleted).

    Example
    -------
    >>> with run_lock("runs/demo"):  # doctest: +SKIP
    ...     status = run_status("runs/demo", epochs=10)
    >>> status.kind, status.initial_epoch  # doctest: +SKIP
    ('fresh', 0)
    """
    run_dir = Path(run_dir)
    done, newest, finished_now = read_complete(run_dir), None, False
    if done is None:
        newest = latest_commit(run_dir)
        if newest is not None and newest.finishes(epochs):
            done, finished_now = finish_run(run_dir, newest, epochs), True
        elif newest is None and orphaned_results(run_dir):
            raise RunFolderError(
                f"{run_dir} holds {' and '.join(orphaned_results(run_dir))} but neither complete.json "
                "nor a resume point: a finished run whose records were removed. Nothing was deleted; "
                "delete those files (or the folder) to train again, or choose another run_dir"
            )
    if done is not None:
        return _complete_status(run_dir, done, epochs, finished_now)
    point = resume_point(run_dir)
    settle(run_dir, point)
    logged, kept = newest.epochs_done if newest else 0, point.epochs_done if point else 0
    return RunStatus("resume" if point else "fresh", point, None, _resume_message(run_dir, logged, kept))


def _complete_status(run_dir: Path, done: dict[str, Any], epochs: int, finished_now: bool) -> RunStatus:
    settle_complete(run_dir)
    if done["epochs"] < epochs:
        raise RunFolderError(
            f"{run_dir} holds a completed {done['epochs']}-epoch run; to train {epochs} epochs "
            "delete it or choose another run_dir"
        )
    if finished_now:
        message = (
            f"{run_dir}: the run's last epoch ({done['epochs_run']}) was logged before an interruption; "
            "the run is now marked complete. Delete it to retrain."
        )
    else:
        message = f"{run_dir} already holds a completed {done['epochs']}-epoch run; delete it to retrain."
    return RunStatus("complete", None, done, message)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _resume_message(run_dir: Path, logged: int, kept: int) -> str:
    """What a resume says: how many epochs it keeps and which logged ones it discards."""
    lost = logged - kept
    if lost <= 0:
        return f"Resuming from {run_dir}: {_count(kept, 'epoch')} already done." if kept else ""
    which = f"epoch {logged}" if lost == 1 else f"epochs {kept + 1} to {logged}"
    if kept == 0:
        return (
            f"{run_dir} holds {_count(lost, 'logged epoch')} but no saved weights to "
            f"resume from: discarding {which} and training again from epoch 1."
        )
    return (
        f"Resuming from {run_dir}: {_count(kept, 'epoch')} already done, saved with their weights; "
        f"discarding the {_count(lost, 'logged epoch')} since ({which}), to train again."
    )
