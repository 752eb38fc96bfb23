"""Issue 13: zarr volumes, out-of-core prediction and blockwise prediction on Dask."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from stub_models import ramp_model

from helpers.config import usable_cores
from helpers.distributed import ModelSpecError, completed_chunks, predict_zarr, worker_threads_env
from helpers.inference import predict_volume
from helpers.io import VolumeError, load_volume, save_volume
from helpers.zarr_volumes import (
    convert_to_zarr,
    create_zarr_volume,
    open_zarr_volume,
    save_zarr_volume,
    zarr_affine,
)

TESTS = Path(__file__).resolve().parent
SHAPE = (100, 90, 110)  # not a multiple of any chunk below
AFFINE = np.array([[0, 0, 0.8, 10.0], [0, 1.1, 0, -4.0], [-0.5, 0, 0, 2.5], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def volume_zarr(tmp_path_factory):
    v = np.random.default_rng(7).random(SHAPE, dtype=np.float32)
    path = save_zarr_volume(tmp_path_factory.mktemp("z") / "in.zarr", v, AFFINE, chunks=48)
    return v, path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".tif", ".npy"])
def test_convert_to_zarr_keeps_voxels_and_affine(suffix, tmp_path, rng):
    v = rng.random((70, 40, 50)).astype(np.float32)
    src = save_volume(tmp_path / f"v{suffix}", v, affine=None if suffix == ".npy" else AFFINE)
    z = open_zarr_volume(convert_to_zarr(src, tmp_path / "v.zarr", chunks=32))
    ref = load_volume(src)
    assert z.chunks == (32, 32, 32) and np.array_equal(z[:], ref.array)
    assert np.allclose(zarr_affine(z), ref.affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, "v.zarr"])  # no temporary left


def test_zarr_store_errors_name_the_path(tmp_path):
    create_zarr_volume(tmp_path / "a.zarr", (8, 8, 8), np.uint8)
    with pytest.raises(VolumeError, match="a.zarr: already exists"):
        create_zarr_volume(tmp_path / "a.zarr", (8, 8, 8), np.uint8)
    (tmp_path / "b.zarr").mkdir()
    with pytest.raises(VolumeError, match="b.zarr: is not a zarr v3 array"):
        open_zarr_volume(tmp_path / "b.zarr")
    with pytest.raises(ValueError, match="chunks"):
        create_zarr_volume(tmp_path / "c.zarr", (8, 8, 8), np.uint8, chunks=(4, 0, 4))


@pytest.mark.parametrize("output", ["labels", "probabilities"])
def test_out_and_array_like_input_from_zarr(output, volume_zarr, tmp_path):
    v, path = volume_zarr
    ref = predict_volume(ramp_model, v, 32, 0.5, 4, output=output, progress=False)
    shape, dtype = (SHAPE, np.uint8) if output == "labels" else ((*SHAPE, 3), np.float32)
    out = create_zarr_volume(tmp_path / "o.zarr", shape, dtype, chunks=40)
    got = predict_volume(
        ramp_model, open_zarr_volume(path), 32, 0.5, 4, output=output, progress=False, out=out
    )
    assert got is out and np.array_equal(out[:], ref)


@pytest.mark.parametrize("output", ["labels", "probabilities"])
@pytest.mark.parametrize("overlap", [0.5, 0.25])
@pytest.mark.parametrize("chunks", [40, 64])
def test_predict_zarr_equals_predict_volume_exactly(output, overlap, chunks, volume_zarr, tmp_path):
    v, path = volume_zarr
    ref = predict_volume(ramp_model, v, 32, overlap, 4, output=output, progress=False)
    target = tmp_path / "out.zarr"
    settings = {
        "patch_size": 32,
        "overlap": overlap,
        "batch_size": 4,
        "output": output,
        "chunks": chunks,
        "n_classes": 3,
        "progress": False,
    }
    stats = predict_zarr(ramp_model, path, target, n_workers=2, **settings)
    out = open_zarr_volume(target)
    assert np.array_equal(out[:], ref)
    assert np.allclose(zarr_affine(out), AFFINE)
    assert stats["computed"] == stats["chunks"] == int(np.prod([-(-s // chunks) for s in SHAPE]))
    assert stats["windows"] > stats["grid_windows"]  # the halo: windows at chunk borders are done twice
    assert not Path(f"{target}.progress").exists()
    again = predict_zarr(ramp_model, path, target, **settings)
    assert again["computed"] == 0 and again["skipped"] == stats["chunks"]


def test_labels_of_over_256_classes_are_written_whole_or_refused_never_wrapped(tmp_path):
    """predict_zarr made uint8 labels for any model and cast each chunk into them: label 299 became 43."""
    v = np.random.default_rng(3).random((24, 20, 28), dtype=np.float32)
    path = save_zarr_volume(tmp_path / "in.zarr", v, AFFINE, chunks=16)
    many = lambda batch: np.concatenate([np.zeros_like(batch)] * 299 + [batch], axis=-1)  # noqa: E731
    ref = predict_volume(many, v, 16, 0.5, 4, output="labels", progress=False)
    assert ref.dtype == np.int32 and ref.max() == 299
    settings = {"patch_size": 16, "batch_size": 4, "chunks": 16, "progress": False}
    predict_zarr(many, path, tmp_path / "wide.zarr", n_classes=300, **settings)
    assert np.array_equal(open_zarr_volume(tmp_path / "wide.zarr")[:], ref)
    with pytest.raises(
        ValueError,
        match=r"narrow.zarr's dtype uint8 holds labels up to 255, but the model returns labels up to 299",
    ):
        predict_zarr(many, path, tmp_path / "narrow.zarr", **settings)  # no n_classes: made uint8
    create_zarr_volume(tmp_path / "given.zarr", v.shape, np.uint8, chunks=16)
    with pytest.raises(ValueError, match=r"given.zarr's dtype uint8 holds labels up to 255"):
        predict_zarr(many, path, tmp_path / "given.zarr", n_classes=300, **settings)


def _worker_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), env.get("PYTHONPATH", "")])
    return env


def test_predict_zarr_on_a_local_cluster_loads_the_model_on_each_worker(
    volume_zarr, tmp_path, monkeypatch, capsys
):
    v, path = volume_zarr
    monkeypatch.setenv("PYTHONPATH", _worker_env()["PYTHONPATH"])
    threads_log = tmp_path / "threads.log"
    monkeypatch.setenv("STUB_THREADS_LOG", str(threads_log))
    ref = predict_volume(ramp_model, v, 32, 0.5, 4, output="labels", progress=False)
    stats = predict_zarr(
        "stub_models:ramp_logging_threads",
        path,
        tmp_path / "o.zarr",
        patch_size=32,
        batch_size=4,
        chunks=50,
        n_workers=2,
        progress=True,
    )
    # one bar over the chunks, as predict_volume's over the windows (distributed's own progress bar
    # showed nothing in an executed notebook: 07 said "a progress bar follows" over no bar)
    n = stats["chunks"]
    assert re.search(rf"predict_zarr: 100%.*\b{n}/{n} \[.*chunk/s", capsys.readouterr().err), n
    assert np.array_equal(open_zarr_volume(tmp_path / "o.zarr")[:], ref)
    assert len(stats["workers"]) == 2 and os.getpid() not in stats["workers"]
    # each worker's TensorFlow gets its share of the cores, not pools as wide as the machine
    share = str(max(1, usable_cores() // 2))
    lines = threads_log.read_text().splitlines()
    started = {int(pid): (intra, inter) for pid, intra, inter in map(str.split, lines)}
    assert set(started) == set(stats["workers"]) and set(started.values()) == {(share, "1")}


def test_worker_threads_share_the_cores_on_cpus_and_are_left_alone_with_a_gpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert worker_threads_env(2, gpus=0) == {"TF_NUM_INTRAOP_THREADS": "4", "TF_NUM_INTEROP_THREADS": "1"}
    assert worker_threads_env(3, gpus=0)["TF_NUM_INTRAOP_THREADS"] == "2"
    assert worker_threads_env(16, gpus=0)["TF_NUM_INTRAOP_THREADS"] == "1"
    assert worker_threads_env(2, gpus=1) == {}


def test_a_killed_run_resumes_with_only_the_missing_chunks(volume_zarr, tmp_path, monkeypatch):
    v, path = volume_zarr
    target = tmp_path / "o.zarr"
    progress = Path(f"{target}.progress")
    script = (
        "from helpers.distributed import predict_zarr\n"
        f"predict_zarr('stub_models:slow_ramp', {str(path)!r}, {str(target)!r}, patch_size=32, batch_size=4,"
        " chunks=50, n_workers=2, progress=False)\n"
    )
    env = dict(_worker_env(), STUB_SLEEP_S="0.15")
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(completed_chunks(progress)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the run, its cluster and every worker, mid-run
    proc.wait()
    time.sleep(0.5)
    finished = completed_chunks(progress)
    assert 3 <= len(finished) < 18
    monkeypatch.setenv("PYTHONPATH", _worker_env()["PYTHONPATH"])
    monkeypatch.setenv("STUB_SLEEP_S", "0")
    with pytest.raises(VolumeError, match="progress of a different prediction"):
        predict_zarr(ramp_model, path, target, patch_size=32, batch_size=4, progress=False)
    stats = predict_zarr(
        "stub_models:slow_ramp", path, target, patch_size=32, batch_size=4, n_workers=2, progress=False
    )
    assert stats["skipped"] == len(finished) and stats["computed"] == stats["chunks"] - len(finished)
    ref = predict_volume(ramp_model, v, 32, 0.5, 4, output="labels", progress=False)
    assert np.array_equal(open_zarr_volume(target)[:], ref)


def test_a_worker_killed_mid_run_costs_only_its_chunk(volume_zarr, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    v, path = volume_zarr
    monkeypatch.setenv("PYTHONPATH", _worker_env()["PYTHONPATH"])
    monkeypatch.setenv("STUB_SLEEP_S", "0.1")
    target = tmp_path / "o.zarr"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=40) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        progress = Path(f"{target}.progress")

        killed = []

        def kill_one():
            deadline = time.monotonic() + 60
            while len(completed_chunks(progress)) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(len(completed_chunks(progress)))

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        stats = predict_zarr(
            "stub_models:slow_ramp",
            path,
            target,
            client=client,
            patch_size=32,
            batch_size=4,
            chunks=50,
            progress=False,
        )
        killer.join(5)
    assert killed and killed[0] < stats["chunks"]  # the worker died with chunks still to do
    assert stats["computed"] == stats["chunks"]
    ref = predict_volume(ramp_model, v, 32, 0.5, 4, output="labels", progress=False)
    assert np.array_equal(open_zarr_volume(target)[:], ref)


def test_predict_zarr_refuses_bad_inputs(volume_zarr, tmp_path):
    v, path = volume_zarr
    one_chunk = save_zarr_volume(tmp_path / "one.zarr", v, chunks=SHAPE)
    with pytest.raises(VolumeError, match="one.zarr: is stored as one chunk"):
        predict_zarr(ramp_model, one_chunk, tmp_path / "o1.zarr", patch_size=32, progress=False)
    wrong = create_zarr_volume(tmp_path / "w.zarr", (100, 90, 111), np.uint8)
    with pytest.raises(VolumeError, match=r"w.zarr: has shape \(100, 90, 111\)"):
        predict_zarr(ramp_model, path, wrong.store_path.store.root, patch_size=32, progress=False)
    create_zarr_volume(tmp_path / "f.zarr", SHAPE, np.float32)
    with pytest.raises(VolumeError, match="integer dtype"):
        predict_zarr(ramp_model, path, tmp_path / "f.zarr", patch_size=32, progress=False)
    with pytest.raises(ValueError, match=r"nearest valid is \(32, 32, 40\)"):
        predict_zarr(
            ramp_model, path, tmp_path / "o2.zarr", patch_size=32, chunks=(20, 32, 40), progress=False
        )
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"patch_size": [32, 32, 32]}))
    with pytest.raises(ModelSpecError, match="run: no best.keras"):
        predict_zarr(run, path, tmp_path / "o3.zarr", progress=False)
    with pytest.raises(ModelSpecError, match="cannot be sent to a cluster"):
        predict_zarr(ramp_model, path, tmp_path / "o4.zarr", client=object(), patch_size=32, progress=False)


def test_nan_in_a_volume_on_disk_is_found_as_it_is_read(tmp_path):
    v = np.zeros((80, 60, 50), np.float32)
    v[70, 50, 3] = np.nan
    z = open_zarr_volume(save_zarr_volume(tmp_path / "nan.zarr", v, chunks=(32, 16, 50)))
    reads = []

    class Counting:
        shape, dtype, ndim, chunks = z.shape, z.dtype, z.ndim, z.chunks

        def __getitem__(self, key):
            reads.append(key)
            return z[key]

    with pytest.raises(VolumeError, match=r"NaN or Inf \(first at index \(70, 50, 3\)\)"):
        predict_volume(ramp_model, Counting(), 32, progress=False)
    assert all(k[0].stop - k[0].start <= 32 for k in reads)  # no whole-volume pass before predicting
    with pytest.raises(VolumeError, match=r"\(70, 50, 3\)"):  # and inside a region, in whole-volume indices
        predict_volume(ramp_model, z, 32, progress=False, region=(slice(60, 80), slice(40, 60), slice(0, 20)))
    mm = np.lib.format.open_memmap(tmp_path / "nan.npy", "w+", np.float32, v.shape)
    mm[:] = v
    with pytest.raises(VolumeError, match=r"\(70, 50, 3\)"):
        predict_volume(ramp_model, np.load(tmp_path / "nan.npy", mmap_mode="r"), 32, progress=False)


def test_write_sandstone_zarr_tiles_without_seams(tmp_path):
    from helpers.datasets import write_sandstone_zarr

    image = write_sandstone_zarr(tmp_path / "i.zarr", (70, 40, 90), tmp_path / "l.zarr", block=32, chunks=24)
    labels = open_zarr_volume(tmp_path / "l.zarr")
    assert image.shape == labels.shape == (70, 40, 90) and image.chunks == (24, 24, 24)
    x = image[:]
    assert np.array_equal(x[32:64], x[31::-1][:32])  # the second tile mirrors the first along Z
    jump = np.abs(np.diff(x, axis=2)).mean(axis=(0, 1))
    assert jump[31] <= jump.mean()  # no seam where tiles meet
    assert set(np.unique(labels[:])) <= {0, 1, 2, 3}
    with pytest.raises(VolumeError, match="already exists"):
        write_sandstone_zarr(tmp_path / "i.zarr", (8, 8, 8), block=16)


def two_channel_model(batch):
    """Uses both input channels, so a lost or swapped channel changes the output."""
    x = batch[..., :1] - 0.5 * batch[..., 1:2]
    return np.concatenate([x, 1 - x], axis=-1)


def test_predict_zarr_takes_a_volume_of_several_channels(tmp_path):
    """Issue 31: 07 builds its large input from a two-channel scan, (Z, Y, X, C) in one zarr store."""
    from helpers.distributed import volume_normalisation

    v = np.random.default_rng(3).random((70, 60, 50, 2), dtype=np.float32)
    v[..., 1] *= 3
    path = save_zarr_volume(tmp_path / "in.zarr", v, AFFINE, chunks=40)
    ref = predict_volume(two_channel_model, v, 32, 0.5, 4, output="probabilities", progress=False)
    settings = {"patch_size": 32, "batch_size": 4, "output": "probabilities", "n_classes": 2}
    predict_zarr(
        two_channel_model, path, tmp_path / "out.zarr", chunks=40, progress=False, normalise=False, **settings
    )
    assert np.array_equal(open_zarr_volume(tmp_path / "out.zarr")[:], ref)
    per_case = {"scheme": "per-channel", "channels": [{"scheme": "zscore-per-case", "modality": "MR"}] * 2}
    stats = volume_normalisation(open_zarr_volume(path), per_case)
    for c, s in enumerate(stats["channels"]):
        assert s["scheme"] == "zscore-fixed" and np.isclose(s["mean"], v[..., c].mean(dtype=np.float64))
        assert np.isclose(s["std"], v[..., c].std(dtype=np.float64))
