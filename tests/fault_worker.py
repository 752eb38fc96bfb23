"""A tiny training run in its own process, for the fault-injection and lock tests.

``python tests/fault_worker.py EPOCHS RUN_DIR`` trains a two-layer Conv3D model on a random
phantom with :func:`helpers.training.train`. It prints ``READY`` before training and
``STARTED k`` at the start of epoch k, flushed, so a test can kill it at a chosen moment and
see which epochs a resume trains. The weights and optimizer state are saved every
``STATE_EVERY`` epochs, so a kill loses at most that many.

``python tests/fault_worker.py --fork EPOCHS`` imports once, prints ``READY``, then reads
``RUN_DIR [SLOW_WRITE_S [KILL_AT [EPOCHS [STATE_EVERY]]]]`` lines from stdin (``SLOW_WRITE_S``:
see ``helpers.io.SLOW_WRITE_ENV``; ``KILL_AT`` 0 for none). For each it forks a child that
trains in RUN_DIR and prints ``PID pid``. The child prints ``WRITE n name`` before the n-th
rename of a temporary file onto a file of RUN_DIR (every write of a run goes through
:func:`helpers.io.atomic_path`), and SIGKILLs itself there when ``KILL_AT`` is n or the name
(``backup/epoch-0002.weights.h5``, ``training.json``): the file is
written but not in place, as after a kill anywhere inside that write. Other lines it prints
(what a resume says) pass through. On the next line of stdin the server reaps the child and
prints ``DONE wait-status``
(until then a child that ended stays a zombie, so its PID cannot go to another process).
A forked child needs no import of its own (9 of the 10 s a fresh process takes here), so
the fault test can kill many trainings in little time; the child is a real process,
killed without warning.
"""

import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import helpers  # noqa: E402, F401  (before Keras: TensorFlow's fast CPU kernels)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers.io import SLOW_WRITE_ENV  # noqa: E402
from helpers.sampling import PatchSampler  # noqa: E402
from helpers.training import train  # noqa: E402

STATE_EVERY = 2


class Report(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        print(f"STARTED {epoch}", flush=True)


def tiny_model(n_classes: int = 3) -> keras.Model:
    inputs = keras.Input((16, 16, 16, 1))
    x = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv3D(n_classes, 1, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


def samplers() -> tuple[PatchSampler, PatchSampler]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (24, 24, 24)).astype(np.uint8)
    image = labels + rng.normal(0, 0.5, labels.shape).astype(np.float32)
    data = PatchSampler(image, labels, 16, 2, 2, n_classes=3, seed=0)
    val = PatchSampler(image, labels, 16, 2, 1, n_classes=3, augment=False, resample_each_epoch=False)
    return data, val


def train_one(epochs: int, run_dir: str, state_every: int = STATE_EVERY) -> None:
    keras.utils.set_random_seed(0)  # the same writes in the same order, run after run (as far as it can)
    data, val = samplers()
    train(tiny_model(), data, val, epochs, run_dir, callbacks=[Report()], verbose=0, state_every=state_every)


def watch_writes(run_dir: str, kill_at: str) -> None:
    """Report every rename onto a file of ``run_dir``; SIGKILL this process at the ``kill_at``-th
    (a number) or at the first onto ``kill_at`` (a name relative to ``run_dir``)."""
    folder, real, count = Path(run_dir).resolve(), os.replace, 0

    def replace(src, dst, *args, **kwargs):
        nonlocal count
        dst = Path(dst).resolve()
        if dst.is_relative_to(folder):
            count += 1
            print(f"WRITE {count} {dst.relative_to(folder)}", flush=True)
            if kill_at in (str(count), str(dst.relative_to(folder))):
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def main(epochs: int, run_dir: str) -> None:
    print("READY", flush=True)
    train_one(epochs, run_dir)
    print("FINISHED", flush=True)


def fork_server(epochs: int) -> None:
    print("READY", flush=True)
    for line in sys.stdin:
        run_dir, *given = line.split()
        defaults = ["0", "0", epochs, STATE_EVERY]
        slow, kill_at, run_epochs, state_every = [*given, *defaults[len(given) :]]
        pid = os.fork()
        if pid == 0:
            try:
                os.environ[SLOW_WRITE_ENV] = slow
                watch_writes(run_dir, kill_at)
                train_one(int(run_epochs), run_dir, int(state_every))
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            os._exit(code)
        print(f"PID {pid}", flush=True)
        sys.stdin.readline()
        _, status = os.waitpid(pid, 0)
        print(f"DONE {status}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--fork":
        fork_server(int(sys.argv[2]))
    else:
        main(int(sys.argv[1]), sys.argv[2])
