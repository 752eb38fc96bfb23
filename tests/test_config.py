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
    for knob, value in [("patch_size", 64), ("learning_rate", 5e-4), ("batch_size", 4), ("epochs", 3)]:
        assert get_params("quick", "sandstone", **{knob: value})["run_dir"] != base, knob


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
