"""A dataset folder is preprocessed once, to disk, and read back as memory maps (helpers.case_cache)."""

import gc
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import datasets, preprocessor
from helpers.case_cache import CACHE_VERSION
from helpers.datasets import make_cores_dataset, open_dataset
from helpers.io import load_volume, release_pages, save_volume

ROOT = Path(__file__).resolve().parents[1]
CORES = [f"core0{i}" for i in range(7)]


@pytest.fixture(scope="module")
def cores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cores_dataset(tmp_path_factory.mktemp("cores") / "ds")


def _builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the cases that open_dataset preprocesses (in this process) from now on."""
    calls: list[str] = []
    real = preprocessor.preprocess_case

    def counting(job):  # noqa: ANN001, ANN202
        calls.append(job.name)
        return real(job)

    monkeypatch.setattr(preprocessor, "preprocess_case", counting)
    return calls


def _open(folder: Path, cache: Path, **kwargs) -> datasets.Dataset:  # noqa: ANN003
    return open_dataset(folder, cache=cache, workers=kwargs.pop("workers", 1), progress=False, **kwargs)


def _same(a: datasets.Dataset, b: datasets.Dataset, names: list[str]) -> bool:
    pairs = [(a.case(n), b.case(n)) for n in names]
    return all(np.array_equal(x.image, y.image) and np.array_equal(x.labels, y.labels) for x, y in pairs)


def test_the_cache_is_reused_and_a_changed_label_file_rebuilds_only_its_case(
    cores: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _builds(monkeypatch)
    first = _open(cores, tmp_path / "cache")
    assert sorted(calls) == CORES
    assert all(isinstance(c.image, np.memmap) and isinstance(c.labels, np.memmap) for c in first.cases)
    assert Path(first.cache).parent == tmp_path / "cache"
    again = _open(cores, tmp_path / "cache")
    assert sorted(calls) == CORES, "a second opening preprocessed again"
    assert _same(first, again, CORES)
    assert again.normalisation == first.normalisation

    label_file = Path(first.case("core06").labels_path)
    vol = load_volume(label_file)
    changed = vol.array.copy()
    changed[changed == 2] = 1  # every quartz voxel becomes clay
    save_volume(label_file, changed, affine=vol.affine)
    st = label_file.stat()
    os.utime(label_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = _open(cores, tmp_path / "cache")
    assert sorted(calls) == [*CORES, "core06"]
    assert not np.any(third.case("core06").labels == 2) and np.any(first.case("core06").labels == 2)
    assert _same(first, third, [n for n in CORES if n != "core06"])


def test_an_old_or_cut_off_cache_is_rebuilt_never_used(
    cores: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = _open(cores, cache)
    cases = Path(first.cache) / "cases"
    meta = json.loads((cases / "core01" / "meta.json").read_text())
    (cases / "core01" / "meta.json").write_text(json.dumps({**meta, "version": CACHE_VERSION - 1}))
    image = cases / "core02" / "image.npy"
    os.truncate(image, image.stat().st_size // 2)
    (cases / "core03" / "labels.npy").unlink()
    stale = cases / ".core04.999999999.x1.partial"  # a writer killed mid-case: no such process
    stale.mkdir()
    (stale / "image.npy").write_bytes(b"half")
    calls = _builds(monkeypatch)
    second = _open(cores, cache)
    assert sorted(calls) == ["core01", "core02", "core03"]
    assert not stale.exists()
    assert _same(first, second, CORES)


def test_a_preprocessing_killed_mid_case_resumes_with_the_cases_it_finished(
    cores: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    code = (
        "import sys; from helpers.datasets import open_dataset\n"
        "open_dataset(sys.argv[1], cache=sys.argv[2], workers=1, progress=False)\n"
    )
    env = {**os.environ, "HELPERS_SLOW_WRITE_S": "0.6", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(cores), str(cache)], env=env, cwd=ROOT)
    deadline, done = time.monotonic() + 120, []
    while time.monotonic() < deadline and proc.poll() is None:
        done = list(cache.glob("*/cases/*/meta.json"))
        if len(done) >= 2 and list(cache.glob("*/cases/.*.partial")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.parent.name for p in cache.glob("*/cases/*/meta.json"))
    assert 2 <= len(done) < len(CORES), f"the kill came too late or too early: {done}"
    assert list(cache.glob("*/cases/.*.partial")), "the kill did not land mid-case"
    calls = _builds(monkeypatch)
    resumed = _open(cores, cache)
    assert sorted(calls) == sorted(set(CORES) - set(done))
    assert not list(cache.glob("*/cases/.*.partial"))
    assert _same(resumed, _open(cores, tmp_path / "fresh"), CORES)


def test_a_full_disk_is_named_with_the_cache_folder_and_leaves_no_half_case(
    cores: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    code = (
        "import sys; from helpers.datasets import open_dataset\n"
        "try:\n"
        "    open_dataset(sys.argv[1], cache=sys.argv[2], workers=1, progress=False)\n"
        "except ValueError as err:\n"
        "    print(type(err).__name__, err); sys.exit(3)\n"
    )

    def tiny_files() -> None:  # every file this process writes stops at 4 KB: a disk that is full
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    run = subprocess.run(
        [sys.executable, "-c", code, str(cores), str(cache)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=tiny_files,
        timeout=120,
    )
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stdout.startswith("CacheError"), run.stdout
    assert "no room left" in run.stdout and str(cache) in run.stdout
    assert not list(cache.glob("*/cases/*/meta.json")) and not list(cache.glob("*/cases/.*"))


def test_a_cache_that_cannot_be_a_folder_is_named(cores: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(ValueError, match="cannot be created") as err:
        _open(cores, blocker)
    assert str(blocker) in str(err.value)


def test_two_worker_processes_preprocess_exactly_what_one_process_does(cores: Path, tmp_path: Path) -> None:
    one = _open(cores, tmp_path / "one", workers=1)
    two = _open(cores, tmp_path / "two", workers=2)
    assert _same(one, two, CORES)
    for name in CORES:
        a, b = one.case(name).candidates, two.case(name).candidates
        assert a.keys() == b.keys() and all(np.array_equal(a[c], b[c]) for c in a)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sampling_growth(folder: Path, cache: Path) -> int:
    """Bytes of resident memory gained by opening ``folder`` and sampling two epochs from all its cases."""
    from helpers.sampling import PatchSampler

    gc.collect()
    before = _rss()
    ds = _open(folder, cache)
    cases = ds.cases
    sampler = PatchSampler(
        [c.image for c in cases], [c.labels for c in cases], 32, 8, 16, n_classes=2, seed=0,
        candidates=[c.candidates for c in cases],
    )  # fmt: skip
    peak = 0
    for _ in range(2):
        for i in range(len(sampler)):
            sampler[i]
            peak = max(peak, _rss())
        sampler.on_epoch_end()
    return peak - before


def _many_cases(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        image = rng.normal(0, 1, (64, 128, 128)).astype(np.float32)
        labels = (image > 1.5).astype(np.uint8)
        np.save(folder / "imagesTr" / f"case{i:02d}.npy", image)
        np.save(folder / "labelsTr" / f"case{i:02d}.npy", labels)
    spec = {"name": f"Many{n}", "modality": "MR", "labels": {"background": 0, "spot": 1}}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def test_sampling_memory_does_not_grow_with_the_number_of_cases(tmp_path: Path) -> None:
    few, many = _many_cases(tmp_path / "two", 2), _many_cases(tmp_path / "twelve", 12)
    cache = tmp_path / "cache"
    for folder in (few, many):  # preprocess first: only the opening and the sampling are measured
        for case in _open(folder, cache).cases:
            release_pages(case.image)
            release_pages(case.labels)
    _sampling_growth(few, cache)  # warm-up: one-time allocations of the first sampling
    grown_few, grown_many = _sampling_growth(few, cache), _sampling_growth(many, cache)
    data_mb = 10 * (64 * 128 * 128 * 5) / 2**20  # what the ten more cases hold: 50 MB
    assert grown_many - grown_few < 12 * 2**20, (
        f"two cases: +{grown_few / 2**20:.1f} MB, twelve: +{grown_many / 2**20:.1f} MB "
        f"(the ten more cases hold {data_mb:.0f} MB)"
    )
