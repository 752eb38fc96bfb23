"""The benchmark scripts run (at toy sizes) and print the tables docs/benchmarks.md records."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}  # stub_models for --model
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_gpu_script_smoke_runs_on_the_cpu():
    # the script's code path on a two-layer stand-in: 15 s alone instead of 45 s with the U-Net, which
    # tests/test_model.py and every notebook pass build, train and predict with already
    out = run("benchmarks/gpu.py", "--smoke", "--model", "stub_models:small_unet_stand_in")
    assert "stub_models:small_unet_stand_in; predict_volume on 48^3" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("float32 |"))
    numbers = [float(x) for x in re.findall(r"\d+\.?\d*", row.split("|", 1)[1])]
    assert len(numbers) == 6 and all(n > 0 for n in numbers)  # train, infer, batches, model s, total s, ratio
    assert "mixed_float16 | n/a: no GPU visible" in out


def test_inference_pipeline_script_reports_both_routes():
    out = run("benchmarks/inference_pipeline.py", "--sizes", "96", "--repeats", "1", "--unet-size", "0")
    row = next(line for line in out.splitlines() if line.strip().startswith("96³"))
    sequential, pipelined = (float(x) for x in row.split("|")[-1].split())
    assert sequential > 1.0 and pipelined > 0.5


def test_stitching_script_reports_each_side_with_its_kernel_time_and_faults():
    out = run("benchmarks/stitching.py", "--sizes", "64", "--repeats", "1", "--idle-wait", "0")
    rows = [line.split("|") for line in out.splitlines() if line.strip().startswith("64³")]
    assert [(r[0].split()[1], r[0].split()[2]) for r in rows] == [
        ("probabilities", "predict"),
        ("probabilities", "frozen"),
        ("labels", "predict"),
        ("labels", "frozen"),
    ]
    for row in rows:  # median, range, user, sys, faults, model s, mem/input; then the ratio to ours
        numbers = [float(x) for x in re.findall(r"\d+\.?\d*", row[1])]
        assert len(numbers) == 8 and numbers[0] > 0 and numbers[5] > 0, row
    assert "runs started busy" in out


def test_out_of_core_script_reports_every_route(tmp_path):
    out = run("benchmarks/out_of_core.py", "--sizes", "64", "--workdir", str(tmp_path))
    routes = [line.split("|")[1].strip() for line in out.splitlines() if line.strip().startswith("64³")]
    assert routes == ["in-memory", "out= zarr", "out= memmap", "predict_zarr"]
    assert not list(tmp_path.glob("*64*"))  # inputs removed without --keep


def test_label_inversion_script_compares_both_routes_and_finds_them_identical():
    out = run("benchmarks/label_inversion.py", "--slices", "12", "--classes", "4")
    assert "identical label maps: True" in out
    assert re.search(r"speed-up \d+\.\dx", out)


def test_docs_give_every_benchmark_script_a_section_of_its_own():
    """Issue 35: docs/benchmarks.md is one section per benchmark, stated in the present."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    for name in (s for s in scripts if s != "frozen_predict_volume.py"):  # stitching.py's baseline
        assert sum(h.startswith(f"`benchmarks/{name}`") for h in headings) == 1, (name, headings)
        section = text.split(f"## `benchmarks/{name}`", 1)[1].split("\n## ", 1)[0]
        assert f"benchmarks/{name}" in section.split("```")[1], f"{name}: the command first"
        assert re.search(r"(Intel|AMD EPYC)[^.\n]*, 20\d\d-\d\d-\d\d", section) or name == "gpu.py", name
    assert {"`make test`", "`make run`", "Changelog"} <= set(headings), headings
    assert not re.search(r"\bsession\b", text, flags=re.I)


def test_the_frozen_baseline_computes_what_predict_volume_does():
    """The frozen baseline is a reimplementation; its docstring checks it against the course."""
    import doctest
    import importlib.util

    spec = importlib.util.spec_from_file_location("frozen", ROOT / "benchmarks" / "frozen_predict_volume.py")
    frozen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frozen)
    result = doctest.testmod(frozen)
    assert result.attempted >= 1 and result.failed == 0
