"""Issue 12: pipelined predict_volume, threaded stitching, mirroring TTA, post-processing."""

import threading
import time

import numpy as np
import pytest
from stub_models import ramp_model, three_class

from helpers.inference import predict_volume
from helpers.patches import extract_patches, stitch_patches
from helpers.postprocessing import keep_largest_component

SHAPES = [(100, 100, 100), (129, 64, 70), (20, 300, 300), (33, 33, 33)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("blend", ["gaussian", "average", "none"])
@pytest.mark.parametrize("output", ["probabilities", "labels"])
def test_pipelined_equals_sequential_bit_for_bit(shape, blend, output, rng):
    v = rng.random(shape).astype(np.float32)
    seq = predict_volume(three_class, v, 64, 0.5, 8, blend, output, progress=False, pipeline=False, threads=1)
    for threads in (1, 2, 3):
        pipe = predict_volume(
            three_class, v, 64, 0.5, 8, blend, output, progress=False, threads=threads, pipeline=True
        )
        assert pipe.dtype == seq.dtype and np.array_equal(pipe, seq), (threads, shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_stitching_matches_the_all_in_memory_reference(shape, overlap, rng):
    """The ring of running sums computes what stitch_patches does with every patch held."""
    v = rng.random(shape).astype(np.float32)
    got = predict_volume(ramp_model, v, 32, overlap, 5, "gaussian", progress=False)
    patches, windows = extract_patches(v, 32, overlap)
    ref = stitch_patches(ramp_model(patches[..., None]), windows, v.shape, "gaussian")
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


def _threads() -> set:
    """This process's threads, less tqdm's monitor (started by the first progress bar of a process)."""
    return {t for t in threading.enumerate() if t.name != "tqdm_monitor"}


@pytest.mark.parametrize("pipeline", [True, None])
@pytest.mark.parametrize("fail_at", [2, 4])  # during the default's timed first calls, and after
def test_model_error_surfaces_at_once_and_leaves_no_thread(pipeline, fail_at, rng):
    v = rng.random((96, 96, 96)).astype(np.float32)
    calls = []

    def failing(batch):
        calls.append(time.perf_counter())
        if len(calls) == fail_at:
            raise RuntimeError("GPU fell over")
        return three_class(batch)

    before = _threads()
    start = None
    with pytest.raises(RuntimeError, match="GPU fell over"):
        try:
            predict_volume(failing, v, 32, 0.5, 4, progress=False, pipeline=pipeline)
        finally:
            start = calls[-1]
            elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert _threads() == before
    assert len(calls) == fail_at


def _stitch_thread_alive() -> bool:
    return any(t.name == "predict_volume-stitch" for t in threading.enumerate())


@pytest.mark.parametrize("frees_cpu", [True, False])
def test_a_callable_is_pipelined_only_when_it_frees_the_cpu(frees_cpu, rng):
    """A model that sleeps (as a GPU call waits) gets the stitching thread beside it from its third
    call on; one that computes on the CPU runs with cutting and stitching after it (on 2 cores
    pipelining a NumPy model was slower, docs/benchmarks.md). The result is the same either way."""
    v = rng.random((64, 64, 96)).astype(np.float32)
    seen = []

    def model(batch):
        seen.append(_stitch_thread_alive())
        if frees_cpu:
            time.sleep(0.02)
        else:
            end = time.process_time() + 0.02
            while time.process_time() < end:
                pass
        return three_class(batch)

    got = predict_volume(model, v, 32, 0.5, 4, progress=False)
    assert seen[:2] == [False, False]  # the first calls are timed, on their own
    assert all(seen[2:]) if frees_cpu else not any(seen[2:]), seen
    assert np.array_equal(got, predict_volume(three_class, v, 32, 0.5, 4, progress=False, pipeline=False))


class FailingVolume:
    """An array-like whose reads fail after a while, as a network store might."""

    def __init__(self, data, fail_after):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads, self.fail_after = 0, fail_after

    def __getitem__(self, key):
        self.reads += 1
        if self.reads > self.fail_after:
            raise OSError("chunk store unreachable")
        return self.data[key]


@pytest.mark.parametrize("pipeline", [True, None])
def test_reader_and_stitcher_errors_surface_with_their_messages(pipeline, rng):
    before = _threads()
    v = rng.random((96, 96, 96)).astype(np.float32)
    source = FailingVolume(v, fail_after=3)  # fails on the 4th of its 5 rows of windows
    with pytest.raises(OSError, match="unreachable"):
        predict_volume(three_class, source, 32, 0.5, 4, progress=False, pipeline=pipeline)

    def nan_later(batch):
        out = three_class(batch)
        out[:, 5, 5, 5, 2] = np.nan
        return out

    with pytest.raises(ValueError, match="model output contains NaN or Inf in class 2"):
        predict_volume(nan_later, v, 32, 0.5, 4, progress=False, pipeline=pipeline)
    assert _threads() == before


def test_array_like_input_is_read_a_block_at_a_time(rng):
    v = rng.random((70, 300, 60)).astype(np.float32)
    source = FailingVolume(v, fail_after=10**9)
    got = predict_volume(three_class, source, 32, 0.5, 4, output="labels", progress=False)
    assert np.array_equal(got, predict_volume(three_class, v, 32, 0.5, 4, output="labels", progress=False))
    # no separate NaN scan: each Z row of windows (z = 0, 13, 25, 38) is read, and checked, in blocks of
    # 256 rows of Y (4 stored chunks of the default 64): [0, 256), then [192, 300) for windows at y >= 240
    assert source.reads == 4 * 2


@pytest.mark.parametrize("output", ["probabilities", "labels"])
def test_out_receives_the_result(output, rng, tmp_path):
    v = rng.random((50, 40, 70)).astype(np.float32)
    ref = predict_volume(three_class, v, 32, 0.5, 4, output=output, progress=False)
    dtype = np.float32 if output == "probabilities" else np.uint8
    out = np.lib.format.open_memmap(tmp_path / "out.npy", "w+", dtype, ref.shape)
    got = predict_volume(three_class, v, 32, 0.5, 4, output=output, progress=False, out=out)
    assert got is out and np.array_equal(np.asarray(out), ref)


@pytest.mark.parametrize(
    ("output", "shape", "dtype", "match"),
    [
        ("labels", (50, 40, 71), np.uint8, "shape"),
        ("labels", (50, 40, 70), np.float32, "integer dtype"),
        ("probabilities", (50, 40, 70), np.float32, "n_classes"),
        ("probabilities", (50, 40, 70, 3), np.float64, "float32"),
        ("probabilities", (50, 40, 70, 2), np.float32, "out has 2 channels but the model returns 3"),
    ],
)
def test_out_of_the_wrong_shape_or_dtype_is_refused(output, shape, dtype, match):
    before = _threads()
    with pytest.raises(ValueError, match=match):
        predict_volume(
            three_class,
            np.zeros((50, 40, 70), np.float32),
            32,
            output=output,
            progress=False,
            out=np.zeros(shape, dtype),
        )
    assert _threads() == before


@pytest.mark.parametrize("pipeline", [False, True])
def test_labels_out_too_narrow_for_the_classes_is_refused_naming_out(pipeline):
    """300 classes into uint8 labels once ended in NumPy's OverflowError from deep in the argmax."""
    many = lambda batch: np.repeat(batch, 300, axis=-1)  # noqa: E731
    volume = np.zeros((20, 20, 20), np.float32)
    narrow, wide = np.zeros(volume.shape, np.uint8), np.zeros(volume.shape, np.int16)
    with pytest.raises(
        ValueError, match=r"out's dtype uint8 holds labels up to 255, but the model returns labels up to 299"
    ):
        predict_volume(many, volume, 16, output="labels", progress=False, out=narrow, pipeline=pipeline)
    got = predict_volume(many, volume, 16, output="labels", progress=False, out=wide, pipeline=pipeline)
    assert got is wide and not wide.any()  # every class scores the same: the first wins


def test_mirroring_an_equivariant_model_changes_nothing(rng):
    v = rng.random((60, 50, 70)).astype(np.float32)
    plain = predict_volume(three_class, v, 32, 0.5, 4, progress=False)
    mirrored = predict_volume(three_class, v, 32, 0.5, 4, progress=False, tta="mirror")
    np.testing.assert_allclose(mirrored, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axes", [(0, 1, 2), (2,), (0, 1)])
def test_mirroring_averages_the_flipped_predictions(axes, rng):
    v = rng.random((60, 50, 70)).astype(np.float32)
    calls = []

    def counted(batch):
        calls.append(1)
        return ramp_model(batch)

    got = predict_volume(counted, v, 32, 0.5, 4, progress=False, tta="mirror", mirror_axes=axes)
    flips = [()] + [
        tuple(c) for r in range(1, len(axes) + 1) for c in __import__("itertools").combinations(axes, r)
    ]
    by_hand = []
    for f in flips:
        ax = tuple(a + 1 for a in f)

        def flipped(batch, ax=ax):
            return np.flip(ramp_model(np.flip(batch, ax)), ax) if ax else ramp_model(batch)

        by_hand.append(predict_volume(flipped, v, 32, 0.5, 4, progress=False))
    np.testing.assert_allclose(got, np.mean(by_hand, axis=0), rtol=1e-5, atol=1e-5)
    plain = predict_volume(ramp_model, v, 32, 0.5, 4, progress=False)
    assert np.abs(got - plain).max() > 0.1  # the ramp model is not equivariant: mirroring matters
    n_batches = len(calls) // len(flips)
    assert len(calls) == n_batches * len(flips) == n_batches * 2 ** len(axes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tta": "rotate"}, "tta"),
        ({"tta": "mirror", "mirror_axes": (3,)}, "mirror_axes"),
        ({"tta": "mirror", "mirror_axes": ()}, "mirror_axes"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_tta_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_volume(three_class, np.zeros((40, 40, 40), np.float32), 32, progress=False, **kwargs)


def test_keep_largest_component_removes_islands_of_chosen_classes_only():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:8, 2:8, 2:8] = 1  # big
    lab[12:14, 12:14, 12:14] = 1  # island
    lab[15:17, 2:4, 2:4] = 2
    lab[2:4, 15:17, 15:17] = 2
    out = keep_largest_component(lab, [1])
    assert (out == 1).sum() == 216 and (out[12:14, 12:14, 12:14] == 0).all()
    assert np.array_equal(out == 2, lab == 2)
    assert out.dtype == lab.dtype and (lab[12, 12, 12] == 1)  # input untouched
    diagonal = np.zeros((3, 3, 3), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = diagonal[2, 2, 1] = 3
    assert (keep_largest_component(diagonal, [3]) == 3).sum() == 1
    assert (keep_largest_component(diagonal, [3], connectivity=3) == 3).sum() == 3


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros((4, 4)), [1]), "labels"),
        ((np.zeros((4, 4, 4), np.float32), [1]), "integer"),
        ((np.zeros((4, 4, 4), np.uint8), [0]), "background"),
        ((np.zeros((4, 4, 4), np.uint8), ["a"]), "classes"),
    ],
)
def test_keep_largest_component_refuses_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        keep_largest_component(*args)


def test_docstring_examples_hold():
    import doctest

    import helpers.evaluation
    import helpers.inference
    import helpers.metrics
    import helpers.postprocessing
    import helpers.stitching
    import helpers.workers

    modules = (helpers.inference, helpers.postprocessing, helpers.evaluation, helpers.metrics)
    for module in (*modules, helpers.stitching, helpers.workers):
        assert doctest.testmod(module).failed == 0, module.__name__


def _rss_kb() -> int:
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0])


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MAP_POPULATE"), reason="MAP_POPULATE is Linux's")
def test_large_zeros_are_mapped_in_at_once():
    """helpers.memory.zeros maps a large array's pages in one call (no fault per page when the
    stitcher first writes them, nor huge-page compaction); numpy.zeros maps them lazily."""
    from helpers.memory import zeros

    before = _rss_kb()
    lazy = np.zeros((64, 512, 512), np.float32)  # 64 MiB
    lazy_kb = _rss_kb() - before
    before = _rss_kb()
    eager = zeros((64, 512, 512), np.float32)
    eager_kb = _rss_kb() - before
    assert lazy_kb < 8 * 1024 and eager_kb >= 60 * 1024, (lazy_kb, eager_kb)
    assert eager.dtype == np.float32 and eager.flags.c_contiguous and eager.flags.writeable
    assert not eager.any() and not lazy.any()
    assert zeros((4, 4), np.uint8).base is None  # small arrays are numpy.zeros
