import subprocess
import sys
from pathlib import Path

import pytest

from helpers.config import PROFILES, ProfileError, get_params, resolve_profile_name

ROOT = Path(__file__).resolve().parents[1]


def test_full_profile_is_the_mission():
    full = PROFILES["full"]
    assert (full["patch_size"], full["batch_size"], full["epochs"]) == (64, 8, 100)


def test_quick_is_smaller_than_cpu_smaller_than_full():
    steps = {n: p["epochs"] * p["steps_per_epoch"] * p["batch_size"] for n, p in PROFILES.items()}
    assert steps["quick"] < steps["cpu"] < steps["full"]
    assert PROFILES["quick"]["epochs"] <= 2


def test_explicit_parameter_overrides_profile_and_none_does_not():
    p = get_params("quick", "brain", epochs=7, batch_size=None, output_dir="/tmp/x")
    assert p["epochs"] == 7
    assert p["batch_size"] == PROFILES["quick"]["batch_size"]
    assert p["dataset"] == "brain" and p["profile"] == "quick"
    assert p["run_dir"].startswith("/tmp/x/runs/brain-quick-")


def test_the_run_folder_changes_with_every_knob_that_changes_the_model(tmp_path):
    base = get_params("quick", "sandstone")["run_dir"]
    assert get_params("quick", "sandstone", overlap=0.25)["run_dir"] == base  # inference only
    knobs = [
        ("patch_size", 64),
        ("learning_rate", 5e-4),
        ("batch_size", 4),
        ("epochs", 3),
        ("lr_schedule", "cosine"),
    ]
    for knob, value in knobs:
        assert get_params("quick", "sandstone", **{knob: value})["run_dir"] != base, knob


def test_a_learning_rate_schedule_is_named_from_the_known_ones():
    assert all(p["lr_schedule"] == "constant" for p in PROFILES.values())
    with pytest.raises(ProfileError, match=r"lr_schedule.*'linear'.*known schedules: constant, cosine"):
        get_params("quick", "sandstone", lr_schedule="linear")


def test_a_dataset_is_a_name_or_a_folder_with_dataset_json(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(ProfileError, match="without a dataset.json"):
        get_params("quick", tmp_path / "mine")
    (tmp_path / "mine" / "dataset.json").write_text("{}")
    p = get_params("quick", str(tmp_path / "mine"))
    assert p["dataset"] == str(tmp_path / "mine") and "/runs/mine-quick-" in p["run_dir"]


def test_auto_resolves_to_a_real_profile():
    assert resolve_profile_name("auto") in ("cpu", "full")


@pytest.mark.parametrize("bad", ["nonsense", "Quick", ""])
def test_unknown_profile_lists_the_valid_ones(bad):
    with pytest.raises(ProfileError, match="valid profiles: quick, cpu, full, auto"):
        get_params(bad)


def test_unknown_dataset_and_parameter_are_refused():
    with pytest.raises(ProfileError, match="dataset"):
        get_params("quick", "lung")
    with pytest.raises(ProfileError, match="epoch"):
        get_params("quick", epoch=3)


def test_make_run_with_bad_profile_fails_at_once():
    out = subprocess.run(
        ["make", "-s", "check-profile", "PROFILE=nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "quick, cpu, full, auto" in out.stderr


def test_runner_rejects_bad_profile_before_running_anything(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "helpers.runner", "--profile", "nonsense", "--output-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "valid profiles" in out.stderr
    assert not any(tmp_path.iterdir())


def test_a_small_memory_machine_gets_one_worker_and_a_smaller_volume():
    """Issue 21: mybinder's 2 GB (a cgroup limit) cannot hold two Dask workers of ~1.2 GB each."""
    import doctest

    import helpers.config
    from helpers.config import PROFILES, SMALL_MEMORY, memory_limit_mb, small_memory_params

    assert memory_limit_mb("MemTotal: 25165824 kB", ["2147483648\n", ""]) == 2048.0  # mybinder
    assert memory_limit_mb("MemTotal: 25165824 kB", ["max\n", "9223372036854771712\n"]) == 24576.0
    cpu = small_memory_params(dict(PROFILES["cpu"]), [], 2048.0)
    assert cpu["small_memory"] and {k: cpu[k] for k in SMALL_MEMORY} == SMALL_MEMORY
    explicit = small_memory_params(dict(PROFILES["cpu"]), ["n_workers"], 2048.0)
    assert explicit["n_workers"] == 2  # an explicit knob wins
    quick = small_memory_params(dict(PROFILES["quick"]), [], 2048.0)
    assert quick["large_shape"] == PROFILES["quick"]["large_shape"]  # already smaller: kept
    big = small_memory_params(dict(PROFILES["cpu"]), [], 24576.0)
    assert not big["small_memory"] and big["n_workers"] == 2
    assert big["large_shape"] == PROFILES["cpu"]["large_shape"]
    assert doctest.testmod(helpers.config).failed == 0


def test_every_notebook_sizes_itself_on_a_small_memory_machine_and_says_so(monkeypatch):
    """Issue 34: mybinder's 2 GB killed 04 (quick profile) in its resume demo; only 07 adapted.
    Below SMALL_MEMORY_MB every notebook trains and predicts on batches of two 32^3 patches,
    ``import helpers`` caps TensorFlow's threads and malloc arenas, and a line says so."""
    import nbformat

    from helpers.config import SMALL_MEMORY_MB, _cgroup_limit_files, kernel_env, small_memory_params

    full = small_memory_params(dict(PROFILES["full"]), [], 2048.0)
    assert (full["patch_size"], full["batch_size"], full["n_workers"]) == (32, 2, 1)
    assert small_memory_params(dict(PROFILES["full"]), ["patch_size"], 2048.0)["patch_size"] == 64
    thin = small_memory_params({**PROFILES["full"], "patch_size": (32, 64, 64)}, [], 2048.0)
    assert thin["patch_size"] == 32  # a shape is compared by its voxels
    big = small_memory_params(dict(PROFILES["full"]), [], 24576.0)
    assert (big["patch_size"], big["batch_size"], big["small_memory"]) == (64, 8, False)

    small = kernel_env(2048.0, cores=64, machine="x86_64")
    assert small["TF_NUM_INTRAOP_THREADS"] == small["TF_NUM_INTEROP_THREADS"] == "2"
    assert small["MALLOC_ARENA_MAX"] == "2" and small["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert kernel_env(2048.0, cores=1, machine="x86_64")["TF_NUM_INTRAOP_THREADS"] == "1"
    large = kernel_env(SMALL_MEMORY_MB + 1.0, cores=64, machine="x86_64")
    assert large == {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}

    # a container's own cgroup, as /proc/self/cgroup names it (cgroup v1 and v2)
    files = _cgroup_limit_files("9:memory:/binder-abc\n0::/user.slice/run.scope\n")
    assert "/sys/fs/cgroup/memory/binder-abc/memory.limit_in_bytes" in files
    assert "/sys/fs/cgroup/user.slice/run.scope/memory.max" in files

    # a faked 2 GB limit reaches a fresh process: import helpers, get_params and the line
    probe = (
        "import os, helpers; from helpers.config import get_params, small_memory_note;"
        "print(os.environ['TF_NUM_INTRAOP_THREADS'], os.environ['MALLOC_ARENA_MAX']);"
        "print(small_memory_note(get_params('cpu')))"
    )
    unset = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "MALLOC_ARENA_MAX")
    env = {k: v for k, v in __import__("os").environ.items() if k not in unset}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "COURSE_MEMORY_MB": "2048"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    threads, arenas, note = out.stdout.split(maxsplit=2)
    assert int(threads) in (1, 2) and arenas == "2", out.stderr
    assert note.startswith("A small-memory machine (2,048 MB): batches of 2 patches of 32^3, 1 Dask worker")
    monkeypatch.setenv("COURSE_MEMORY_MB", "two gigabytes")
    with pytest.raises(ProfileError, match="COURSE_MEMORY_MB"):
        get_params("quick")

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        sizing = next(c.source for c in cells if c.cell_type == "code" and "params = get_params(" in c.source)
        assert 'if params["small_memory"]:' in sizing, path.stem
        assert "print(small_memory_note(params)" in sizing, path.stem
