"""The pinned stack: the three --no-deps libraries import and work on Keras 3 / NumPy 2."""

import re
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_nodeps_libraries_are_installed_at_their_pins():
    pins = _pins(ROOT / "requirements-nodeps.txt")
    assert set(pins) == {"segmentation-models-3d", "classification-models-3d", "patchify"}
    for name, pinned in pins.items():
        assert version(name) == pinned


def test_stack_is_the_new_one_the_pins_reject():
    # segmentation-models-3D declares keras==3.3.3 and patchify numpy<2: both are overridden.
    assert tuple(int(p) for p in version("keras").split(".")[:2]) >= (3, 12)
    assert int(np.__version__.split(".")[0]) >= 2
    assert version("tensorflow").startswith("2.21")


def test_nodeps_step_lives_in_one_script():
    script = (ROOT / "scripts" / "install-nodeps.sh").read_text()
    assert "--no-deps" in script and "requirements-nodeps.txt" in script
    for caller in ("Makefile", "binder/postBuild"):
        text = (ROOT / caller).read_text()
        assert "scripts/install-nodeps.sh" in text, caller
        assert "segmentation-models-3D==" not in text, f"{caller} repeats the pins"
    main = _pins(ROOT / "requirements.txt")
    assert not set(main) & set(_pins(ROOT / "requirements-nodeps.txt"))


def test_patchify_runs_on_numpy_2():
    import patchify

    v = np.arange(64 * 64 * 64, dtype=np.float32).reshape(64, 64, 64)
    p = patchify.patchify(v, (32, 32, 32), step=32)
    assert p.shape == (2, 2, 2, 32, 32, 32)
    assert np.array_equal(patchify.unpatchify(p, v.shape), v)


def test_segmentation_models_3d_builds_resnet18_unet_offline():
    import segmentation_models_3D as sm

    model = sm.Unet("resnet18", input_shape=(64, 64, 64, 1), classes=4, encoder_weights=None)
    n = model.count_params()
    assert 42.1e6 < n < 43.1e6, n
    assert model.output_shape == (None, 64, 64, 64, 4)


def test_importing_helpers_turns_on_tensorflows_onednn_kernels_on_x86_before_tensorflow_loads():
    import os
    import platform
    import subprocess
    import sys

    from helpers.runner import KERNEL_ENV

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    probe = (
        "import os, sys, helpers; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert out.stdout.split() == (["1"] if x86 else ["None"]) + ["False"], out.stderr
    if x86:  # notebook kernels inherit it, also where a cell imports Keras before helpers
        assert KERNEL_ENV["TF_ENABLE_ONEDNN_OPTS"] == "1"
    kept = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "TF_ENABLE_ONEDNN_OPTS": "0"},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert kept.stdout.split()[0] == "0"  # a user's own choice wins


def test_importing_helpers_after_tensorflow_warns_that_the_fast_kernels_may_be_off():
    import os
    import platform
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    fake_tf = "import sys, types; sys.modules['tensorflow'] = types.ModuleType('tensorflow'); "
    def run(code):
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)

    late, first = run(fake_tf + "import helpers"), run("import helpers; " + fake_tf)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert ("TensorFlow was imported before helpers" in late.stderr) == x86, late.stderr
    assert "RuntimeWarning" not in first.stderr


def test_every_script_that_uses_tensorflow_imports_helpers_at_its_top():
    """A script run from a shell has no TF_ENABLE_ONEDNN_OPTS unless helpers sets it before
    TensorFlow loads (``benchmarks/gpu.py --smoke`` once imported Keras first)."""
    import ast

    scripts = sorted((ROOT / "benchmarks").glob("*.py")) + [ROOT / "tests" / "fault_worker.py"]
    for script in scripts:
        tree = ast.parse(script.read_text())
        imported = [
            (node.lineno, alias.name.split(".")[0])
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        ]
        uses_tf = [line for line, name in imported if name in ("keras", "tensorflow")]
        top_helpers = [
            node.lineno
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            and any(
                (alias.name if isinstance(node, ast.Import) else node.module or "").split(".")[0] == "helpers"
                for alias in node.names
            )
        ]
        if uses_tf:
            assert top_helpers and min(top_helpers) < min(uses_tf), script.name


def test_importing_helpers_keeps_tensorflows_log_lines_out_of_any_kernel():
    """Issue 34: only helpers.runner set TF_CPP_MIN_LOG_LEVEL, so in plain Jupyter "failed call
    to cuInit" (no GPU) and the CPU feature guard's lines reached cell outputs."""
    import os
    import subprocess
    import sys

    import helpers
    from helpers.runner import KERNEL_ENV

    assert KERNEL_ENV == helpers.KERNEL_ENV and KERNEL_ENV["TF_CPP_MIN_LOG_LEVEL"] == "3"
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV}
    probe = (
        "import helpers, tensorflow as tf; tf.config.list_physical_devices('GPU');"
        "print(int(tf.constant(1) + 1))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "2", out.stderr
    for line in ("cuInit", "cpu_feature_guard", "This TensorFlow binary is optimized"):
        assert line not in out.stderr, out.stderr
