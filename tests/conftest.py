import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Under pytest-xdist, each worker's TensorFlow (and the notebook kernels and commands it starts,
# which inherit this environment) gets its share of the cores, not thread pools as wide as the
# machine: two workers on 2 cores otherwise run four busy pools (docs/benchmarks.md, 2026-12-02).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    from helpers.config import gpu_visible
    from helpers.distributed import worker_threads_env

    for _name, _value in worker_threads_env(_workers, gpus=int(gpu_visible())).items():
        os.environ.setdefault(_name, _value)
os.environ.setdefault("MPLBACKEND", "Agg")
if "HELPERS_CACHE_DIR" not in os.environ:  # dataset folders opened by tests are preprocessed here
    os.environ["HELPERS_CACHE_DIR"] = tempfile.mkdtemp(prefix="helpers-cache-")
    atexit.register(shutil.rmtree, os.environ["HELPERS_CACHE_DIR"], True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import helpers  # noqa: E402, F401  (sets TensorFlow's CPU options before a test imports it)

#: The slowest files, slowest first (per-file sums of ``--durations=0`` under ``make test``,
#: 2026-12-02: 355, 297, 189, 162, 159, 124 and 78 s; every other file took under 50 s).
#: ``make test``'s pytest-xdist hands whole files to its workers in collection order
#: (``--dist loadfile --no-loadscope-reorder``), so collecting these first lets every worker
#: start on a long file and share out the short ones at the end, instead of one worker
#: finishing a course pass alone. test_faults.py moved up when its kill-in-any-write test came
#: (the file took 311 s alone on 2026-12-05, 111 s of it that test).
SLOWEST_FIRST = (
    "test_training.py",
    "test_course_sandstone.py",
    "test_course_two_cases.py",
    "test_faults.py",
    "test_course_real_export.py",
    "test_course_brain.py",
    "test_course_one_case.py",
    "test_notebooks.py",
    "test_benchmarks.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
