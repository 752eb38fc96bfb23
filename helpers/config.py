"""Run profiles: named parameter sets that size the course for a machine.

``quick`` is a CI smoke run, ``cpu`` a meaningful run on a 2-core laptop (``make run``
took 25 minutes on the course's 2-core machine on 2026-11-28), ``full`` the mission's settings
(64^3 patches, batch 8, 100 epochs).
This module uses the standard library only, so the Makefile can validate a
profile name before anything is installed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The course's public home (owner/name on GitHub). Every notebook's Colab and Binder
#: badges and its Colab setup cell use it; ``tests/test_notebooks.py`` checks that they
#: agree. A fork changes it here and in the notebooks together.
COURSE_REPO = "unet3d-course/unet3d-course"
COURSE_URL = f"https://github.com/{COURSE_REPO}"
OUTPUTS = REPO_ROOT / "outputs"

#: Every library the notebooks and ``helpers`` import (distribution names; 00 prints their
#: versions). ``requirements.txt`` (or ``requirements-nodeps.txt``) pins each, and Binder's
#: ``binder/requirements.txt`` and conda's ``environment.yml`` install each; on Colab each is
#: preinstalled (``colab/preinstalled.txt``) or installed where missing by the notebooks' setup cell
#: (``colab/requirements.txt``). ``tests/test_install_parity.py`` checks these against the imports.
RUNTIME_PACKAGES = (
    "numpy",
    "tensorflow",
    "keras",
    "segmentation-models-3D",
    "classification-models-3D",
    "patchify",
    "scipy",
    "scikit-image",
    "nibabel",
    "pydicom",
    "tifffile",
    "nilearn",
    "matplotlib",
    "ipywidgets",
    "tqdm",
    "zarr",
    "dask",
    "distributed",
    "papermill",
)
#: Distribution names a runtime package may be installed under: Binder's image installs
#: ``tensorflow-cpu`` (no GPU), Intel's and Apple's builds have names of their own. The first one
#: installed is the package (:func:`package_version`); ``tests/test_install_parity.py`` maps the
#: install routes' names with this table too.
DISTRIBUTION_NAMES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"),
}
#: Import names of the runtime packages whose distribution name is not their module's name.
MODULE_NAMES = {
    "scikit-image": "skimage",
    "segmentation-models-3D": "segmentation_models_3D",
    "classification-models-3D": "classification_models_3D",
}


def package_version(name: str) -> tuple[str, str]:
    """The installed version of runtime package ``name`` and where it was read.

    The first of its distribution names (:data:`DISTRIBUTION_NAMES`, else ``name`` itself) that is
    installed gives the version; when none is (a package copied in without metadata), the
    module's ``__version__`` does. Raises ``importlib.metadata.PackageNotFoundError`` naming what
    was tried when neither exists.

    Example
    -------
    >>> package_version("numpy")[1]
    'numpy'
    """
    import importlib
    from importlib import metadata

    dists = DISTRIBUTION_NAMES.get(name, (name,))
    for dist in dists:
        try:
            return metadata.version(dist), dist
        except metadata.PackageNotFoundError:
            pass
    module = MODULE_NAMES.get(name, name.replace("-", "_"))
    try:
        found = getattr(importlib.import_module(module), "__version__", None)
    except ImportError:
        found = None
    if found is None:
        raise metadata.PackageNotFoundError(
            f"{name}: no distribution {' or '.join(dists)} is installed, "
            f"and no module {module} with a __version__"
        )
    return str(found), f"{module}.__version__"


#: Parameters a notebook's ``parameters`` cell may set; None there means "take the profile's".
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "sandstone_shape": (48, 48, 48),  # each of 5 cores (helpers.demos)
        "brain_zoom": 0.25,
        "val_fraction": 0.4,
        "patch_size": 32,
        "target_spacing": None,  # (Z, Y, X) mm; None: the plan chooses (helpers.planning)
        "overlap": 0.5,
        "epochs": 2,
        "batch_size": 2,
        "steps_per_epoch": 3,
        "val_steps": 2,
        "learning_rate": 1e-3,
        "lr_schedule": "constant",  # or "cosine": Adam's rate falls along half a cosine to 0
        "augmentation": "flips",  # or "full": flips and turns, then zoom, contrast, brightness
        "loss": "dice+ce",
        "large_shape": (64, 64, 80),  # 1.25 MB: eight 48^3 output chunks meeting at one corner
        "large_chunk": 48,
        "large_overlap": 0.5,
        "memory_budget_mb": 1,
        "n_workers": 1,  # one TensorFlow process, not two: 51 s of CPU instead of 71 s (2026-12-02)
        "overfit_steps": 10,
    },
    "cpu": {
        "sandstone_shape": (64, 96, 96),  # each of 5 cores (helpers.demos)
        "brain_zoom": 0.5,
        "val_fraction": 0.4,
        "patch_size": 32,  # 64^3 did not beat it at the same compute or wall clock (benchmarks/patch_size.py)
        "target_spacing": None,  # (Z, Y, X) mm; None: the plan chooses (helpers.planning)
        "overlap": 0.5,
        "epochs": 12,
        "batch_size": 8,
        "steps_per_epoch": 25,
        "val_steps": 4,
        "learning_rate": 2e-3,
        "lr_schedule": "constant",  # or "cosine": Adam's rate falls along half a cosine to 0
        "augmentation": "flips",  # or "full": flips and turns, then zoom, contrast, brightness
        "loss": "dice+ce",
        # 216 MB, 1.7 x the budget, in eight 192^3 chunks meeting at one corner: what 07 shows.
        # 07 took 286 s here, against 874 s for the 512^3 volume it had until 2026-12-02
        "large_shape": (384, 384, 384),
        "large_chunk": 192,
        "large_overlap": 0.25,
        "memory_budget_mb": 128,
        "n_workers": 2,
        "overfit_steps": 10,
    },
    "full": {
        "sandstone_shape": (128, 192, 192),  # each of 5 cores (helpers.demos)
        "brain_zoom": 1.0,
        "val_fraction": 0.25,
        "patch_size": 64,
        "target_spacing": None,  # (Z, Y, X) mm; None: the plan chooses (helpers.planning)
        "overlap": 0.5,
        "epochs": 100,
        "batch_size": 8,
        "steps_per_epoch": 100,
        "val_steps": 16,
        "learning_rate": 1e-3,
        "lr_schedule": "constant",  # or "cosine": Adam's rate falls along half a cosine to 0
        "augmentation": "flips",  # or "full": flips and turns, then zoom, contrast, brightness
        "loss": "dice+ce",
        "large_shape": (1024, 1024, 1024),
        "large_chunk": 256,
        "large_overlap": 0.5,
        "memory_budget_mb": 2048,
        "n_workers": 2,
        "overfit_steps": 50,
    },
}

DATASETS = ("sandstone", "brain")
#: Loss names understood by :class:`helpers.model.SegmentationLoss`.
LOSSES = ("dice", "ce", "bce", "focal", "dice+ce", "dice+bce", "dice+focal")
#: Learning-rate schedules of :func:`helpers.training.learning_rate_schedule`.
SCHEDULES = ("constant", "cosine")
#: Kinds of :func:`helpers.augmentation.augment_patch`, which imports them from here.
AUGMENTATIONS = ("flips", "full")


class ProfileError(ValueError):
    """An unknown profile or parameter name."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as a container or ``taskset``
    limits it), else ``os.cpu_count()``; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def gpu_visible() -> bool:
    """True when ``nvidia-smi -L`` lists at least one GPU (no TensorFlow import)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


#: CPU flags (Linux ``/proc/cpuinfo`` names) of native bfloat16 matrix arithmetic: Intel AMX and
#: AVX-512 BF16 (Sapphire Rapids and later, AMD Zen 4 and later). Without them bfloat16 is emulated.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def cpu_flags(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``avx2``, ``amx_bf16``, ...); empty elsewhere."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def choose_precision(gpus: int, flags: frozenset[str] | set[str]) -> tuple[str, str]:
    """The dtype policy ``set_precision("auto")`` picks, and why, in words.

    ``mixed_float16`` with a GPU; ``mixed_bfloat16`` on a CPU with native bfloat16
    arithmetic (:data:`BF16_CPU_FLAGS`); ``float32`` otherwise: TensorFlow's CPU build
    has no float16 MaxPool3D, and emulated bfloat16 is far slower (one U-Net training
    step, batch 2 of 32³, took 56.6 s against 0.89 s in float32 on an AVX2-only AMD Zen 3;
    ``docs/benchmarks.md``).

    Example
    -------
    >>> choose_precision(0, {"avx2", "amx_bf16"})
    ('mixed_bfloat16', 'the CPU has amx_bf16 (native bfloat16)')
    >>> choose_precision(0, {"avx2"})[0]
    'float32'
    """
    if gpus > 0:
        return "mixed_float16", f"{gpus} GPU(s) visible"
    native = [f for f in BF16_CPU_FLAGS if f in flags]
    if native:
        return "mixed_bfloat16", f"the CPU has {' and '.join(native)} (native bfloat16)"
    return "float32", "no GPU, and the CPU has neither AMX nor AVX-512 BF16"


#: Below this much memory a machine is small, as mybinder's 2 GB containers are. Each Dask worker
#: of 07 holds TensorFlow and the model (about 1.2 GB on the cpu profile, docs/benchmarks.md), so
#: there 07 predicts with one worker and a smaller volume, and every notebook trains and predicts
#: on batches of two 32^3 patches: :data:`SMALL_MEMORY` replaces any larger profile value that was
#: not set explicitly. ``import helpers`` also caps TensorFlow's threads and glibc's malloc arenas
#: there (:func:`kernel_env`), each of which holds memory of its own.
SMALL_MEMORY_MB = 4096
SMALL_MEMORY = {
    "n_workers": 1,
    "large_shape": (256, 256, 256),
    "memory_budget_mb": 32,
    "batch_size": 2,
    "patch_size": 32,
}
#: On a small-memory machine: TensorFlow's intra- and inter-op threads, and glibc's malloc arenas.
SMALL_MEMORY_THREADS = 2
SMALL_MEMORY_ARENAS = 2
#: Set to a number of MB, the memory limit the course sizes itself for when it is below the
#: machine's own (``COURSE_MEMORY_MB=2048`` tries mybinder's settings on a laptop).
MEMORY_ENV = "COURSE_MEMORY_MB"


def memory_limit_mb(meminfo: str | None = None, cgroup_limits: Sequence[str] | None = None) -> float:
    """The memory this process may use, in MB: the smallest of the machine's RAM (``MemTotal`` of
    ``/proc/meminfo``), a container's cgroup limit (``memory.max`` of cgroup v2, or
    ``memory.limit_in_bytes`` of v1, of the root or of this process's own cgroup), as mybinder
    sets one, and :data:`MEMORY_ENV` where set; ``inf`` where none is readable.

    Example
    -------
    >>> memory_limit_mb("MemTotal:       24576000 kB", ["2147483648"])
    2048.0
    >>> memory_limit_mb("MemTotal:       8192000 kB", ["max"])
    8000.0
    """
    if meminfo is None:
        meminfo = _read("/proc/meminfo")
    if cgroup_limits is None:
        cgroup_limits = [_read(f) for f in _cgroup_limit_files(_read("/proc/self/cgroup"))]
    limits = [math.inf]
    found = re.search(r"MemTotal:\s*(\d+)\s*kB", meminfo)
    if found:
        limits.append(int(found[1]) / 1024)
    for text in cgroup_limits:
        if text.strip().isdigit() and int(text) < 2**60:  # cgroup v1 writes "no limit" as ~2^63
            limits.append(int(text) / 2**20)
    chosen = os.environ.get(MEMORY_ENV, "").strip()
    if chosen:
        try:
            limits.append(float(chosen))
        except ValueError:
            raise ProfileError(f"{MEMORY_ENV}={chosen!r} is not valid: it must be a number of MB") from None
    return min(limits)


def is_small_memory(limit_mb: float | None = None) -> bool:
    """Whether a machine with ``limit_mb`` MB (by default :func:`memory_limit_mb`) is a
    small-memory one: under :data:`SMALL_MEMORY_MB`, as mybinder's 2 GB containers are.

    >>> is_small_memory(2048), is_small_memory(16384)
    (True, False)
    """
    return (memory_limit_mb() if limit_mb is None else limit_mb) < SMALL_MEMORY_MB


def _cgroup_limit_files(proc_cgroup: str) -> list[str]:
    """The cgroup memory-limit files that may apply to this process: the mounted root's, and those
    of its own cgroup as ``/proc/self/cgroup`` names it (v2 ``0::/path``, v1 ``N:memory:/path``)."""
    files = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    for line in proc_cgroup.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        path = path.strip().rstrip("/")
        if path and controllers == "":
            files.append(f"/sys/fs/cgroup{path}/memory.max")
        elif path and "memory" in controllers.split(","):
            files.append(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
    return files


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def small_memory_params(params: dict[str, Any], explicit: Iterable[str], limit_mb: float) -> dict[str, Any]:
    """``params`` with :data:`SMALL_MEMORY`'s values where the machine has under
    :data:`SMALL_MEMORY_MB` (``limit_mb``), a knob was not set explicitly and the profile's value
    is larger; ``params["small_memory"]`` says whether the machine is small, and
    ``params["memory_limit_mb"]`` what it has."""
    small = is_small_memory(limit_mb)
    params = {**params, "small_memory": small, "memory_limit_mb": limit_mb}
    if small:
        for key, value in SMALL_MEMORY.items():
            if key not in explicit and _magnitude(key, params[key]) > _magnitude(key, value):
                params[key] = value
    return params


def _magnitude(key: str, value: int | tuple[int, ...]) -> int:
    """A count, or the number of voxels of a shape (a patch given as one side is a cube): what
    "larger" means for a knob."""
    if isinstance(value, tuple):
        return math.prod(value)
    return value**3 if key == "patch_size" else value


def kernel_env(
    limit_mb: float | None = None, cores: int | None = None, machine: str | None = None
) -> dict[str, str]:
    """The environment ``import helpers`` sets before TensorFlow loads (where the user has not set
    it), and that ``helpers.runner``'s notebook kernels inherit.

    ``TF_CPP_MIN_LOG_LEVEL=3``: TensorFlow's C++ INFO, WARNING and ERROR lines ("failed call to
    cuInit" without a GPU, grappler's "remapper failed") stay out of cell outputs. On x86
    ``TF_ENABLE_ONEDNN_OPTS=1`` (see ``helpers/__init__.py``). On a machine with under
    :data:`SMALL_MEMORY_MB` (``limit_mb``, by default :func:`memory_limit_mb`):
    ``TF_NUM_INTRAOP_THREADS`` and ``TF_NUM_INTEROP_THREADS`` of at most
    :data:`SMALL_MEMORY_THREADS` (TensorFlow sizes its pools by the host's cores, which a container
    shows in full), and ``MALLOC_ARENA_MAX`` of :data:`SMALL_MEMORY_ARENAS` for processes started
    from here (Dask's workers); :func:`limit_malloc_arenas` does it for this one.

    Example
    -------
    >>> kernel_env(2048, cores=64, machine="x86_64")["TF_NUM_INTRAOP_THREADS"]
    '2'
    >>> sorted(kernel_env(16384, cores=64, machine="arm64"))
    ['TF_CPP_MIN_LOG_LEVEL']
    """
    import platform

    env = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    if (machine or platform.machine()).lower() in ("x86_64", "amd64"):
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    if is_small_memory(limit_mb):
        threads = str(min(cores or usable_cores(), SMALL_MEMORY_THREADS))
        env.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads)
        env["MALLOC_ARENA_MAX"] = str(SMALL_MEMORY_ARENAS)
    return env


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap this process's glibc malloc arenas at ``arenas`` (``mallopt(M_ARENA_MAX)``; the
    ``MALLOC_ARENA_MAX`` variable is only read when a process starts). Each thread that allocates
    otherwise gets an arena of its own, which keeps what it freed. True where it took effect
    (glibc), False elsewhere."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(-8, int(arenas)))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def small_memory_note(params: dict[str, Any]) -> str:
    """One line saying how a notebook sized itself on a small-memory machine ("" on a larger one).

    Example
    -------
    >>> small_memory_note({"small_memory": True, "memory_limit_mb": 2048, "batch_size": 2,
    ...                    "patch_size": 32, "n_workers": 1})  # doctest: +ELLIPSIS
    'A small-memory machine (2,048 MB): batches of 2 patches of 32^3, 1 Dask worker, ...'
    """
    if not params.get("small_memory"):
        return ""
    patch = params["patch_size"]
    side = "x".join(map(str, patch)) if isinstance(patch, tuple) else f"{patch}^3"
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS", "all")
    arenas = os.environ.get("MALLOC_ARENA_MAX", "default")
    workers = params["n_workers"]
    return (
        f"A small-memory machine ({params['memory_limit_mb']:,.0f} MB): batches of {params['batch_size']} "
        f"patches of {side}, {workers} Dask worker{'s' * (workers != 1)}, TensorFlow on {threads} threads, "
        f"{arenas} malloc arenas"
    )


def resolve_profile_name(name: str) -> str:
    """Map ``auto`` to ``full`` with a GPU and ``cpu`` without; validate other names."""
    if name == "auto":
        return "full" if gpu_visible() else "cpu"
    if name not in PROFILES:
        valid = ", ".join([*PROFILES, "auto"])
        raise ProfileError(f"profile={name!r} is not a profile; valid profiles: {valid}")
    return name


def get_params(profile: str = "auto", dataset: str = "sandstone", **overrides: Any) -> dict[str, Any]:
    """Return the profile's parameters with explicit, non-None ``overrides`` applied.

    This is what a notebook's ``parameters`` cell feeds: every knob left at None
    comes from the profile, every knob set explicitly wins. ``dataset`` is an
    embedded name ("sandstone", "brain") or a dataset folder (see
    :func:`helpers.datasets.open_dataset`). Unless ``run_dir`` is given, the run
    folder is ``<output_dir>/runs/<dataset>-<profile>-<hash>``, the hash taken over
    the parameters that change the model (:data:`MODEL_KEYS`), so changing one of
    them trains a new model instead of reusing the old one.
    """
    name = resolve_profile_name(profile)
    dataset = check_dataset(dataset)
    params = dict(PROFILES[name])
    for key, value in overrides.items():
        if key not in params and key not in ("run_dir", "output_dir"):
            raise ProfileError(f"{key!r} is not a profile parameter; known: {sorted(params)}")
        if value is not None:
            params[key] = check_param(key, value)
    explicit = [k for k, v in overrides.items() if v is not None]
    params = small_memory_params(params, explicit, memory_limit_mb())
    params["profile"] = name
    params["dataset"] = dataset
    out = Path(params.get("output_dir") or OUTPUTS)
    params["output_dir"] = str(out)
    default_run = out / "runs" / f"{dataset_label(dataset)}-{name}-{model_key(params)}"
    params["run_dir"] = str(params.get("run_dir") or default_run)
    return params


#: The parameters that change what a training run produces; their hash names the run folder.
MODEL_KEYS = (
    "dataset",
    "patch_size",
    "target_spacing",
    "batch_size",
    "epochs",
    "steps_per_epoch",
    "val_steps",
    "learning_rate",
    "lr_schedule",
    "augmentation",
    "loss",
    "sandstone_shape",
    "brain_zoom",
    "val_fraction",
)


def model_params(params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that changes the trained model (JSON-ready: tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if k in MODEL_KEYS}


def model_key(params: dict[str, Any]) -> str:
    """Eight hex digits that change whenever a parameter of :data:`MODEL_KEYS` changes."""
    import hashlib
    import json

    blob = json.dumps(model_params(params), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def check_dataset(dataset: Any) -> str:
    """An embedded dataset name, or the absolute path of a dataset folder with a ``dataset.json``."""
    if isinstance(dataset, str) and dataset in DATASETS:
        return dataset
    if isinstance(dataset, (str, os.PathLike)) and str(dataset):
        folder = Path(dataset).expanduser()
        if (folder / "dataset.json").is_file():
            return str(folder.resolve())
        if folder.is_dir():
            raise ProfileError(f"dataset={str(dataset)!r} is a folder without a dataset.json")
    raise ProfileError(
        f"dataset={dataset!r} is neither an embedded dataset ({', '.join(DATASETS)}) "
        "nor a folder holding dataset.json, imagesTr/ and labelsTr/"
    )


def dataset_label(dataset: str) -> str:
    """A short name for file names: the embedded name, or the dataset folder's name."""
    return dataset if dataset in DATASETS else Path(dataset).name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_param(key: str, value: Any) -> Any:
    """Return ``value`` for parameter ``key`` if its type and range are valid, else ProfileError.

    ``patch_size`` is an int or 3 ints, each a positive multiple of 32 (the U-Net
    pools 5 times); counts are integers >= 1; fractions lie in their interval.
    Tuples are returned as tuples so a parameter set can be hashed and compared.
    """

    def bad(rule: str) -> ProfileError:
        return ProfileError(f"{key}={value!r} is not valid: {rule}")

    if key == "patch_size":
        sizes = [value] if _is_int(value) else list(value) if isinstance(value, (tuple, list)) else None
        if sizes is None or len(sizes) not in (1, 3) or not all(_is_int(v) and v > 0 for v in sizes):
            raise bad("it must be an int or 3 ints (voxels)")
        if any(v % 32 for v in sizes):
            raise bad("each side must be a multiple of 32 (the U-Net halves it 5 times)")
        return value if _is_int(value) else tuple(sizes)
    if key == "target_spacing":
        if (
            not isinstance(value, (tuple, list))
            or len(value) != 3
            or not all(_is_real(v) and v > 0 for v in value)
        ):
            raise bad("it must be 3 numbers > 0 (Z, Y, X mm)")
        return tuple(float(v) for v in value)
    if key in ("epochs", "batch_size", "steps_per_epoch", "val_steps", "n_workers"):
        if not _is_int(value) or value < 1:
            raise bad("it must be an integer >= 1")
    elif key == "overfit_steps":
        if not _is_int(value) or value < 0:
            raise bad("it must be an integer >= 0 (0 skips the check)")
    elif key in ("overlap", "large_overlap"):
        if not _is_real(value) or not 0 <= value < 1:
            raise bad("it must be a fraction in [0, 1)")
    elif key == "val_fraction":
        if not _is_real(value) or not 0 < value < 1:
            raise bad("it must be a fraction in (0, 1)")
    elif key == "learning_rate":
        if not _is_real(value) or value <= 0:
            raise bad("it must be a number > 0")
    elif key == "brain_zoom":
        if not _is_real(value) or not 0 < value <= 4:
            raise bad("it must be a number in (0, 4]")
    elif key == "loss":
        if value not in LOSSES:
            raise bad(f"known losses: {', '.join(LOSSES)}")
    elif key == "lr_schedule":
        if value not in SCHEDULES:
            raise bad(f"known schedules: {', '.join(SCHEDULES)}")
    elif key == "augmentation":
        if value not in AUGMENTATIONS:
            raise bad(f"known augmentations: {', '.join(AUGMENTATIONS)}")
    elif key == "large_chunk":
        if not _is_int(value) or value < 32:
            raise bad("it must be an integer >= 32 (voxels)")
    elif key == "memory_budget_mb":
        if not _is_int(value) or value < 1:
            raise bad("it must be an integer >= 1 (MB)")
    elif key in ("sandstone_shape", "large_shape"):
        if (
            not isinstance(value, (tuple, list))
            or len(value) != 3
            or not all(_is_int(v) and v >= 16 for v in value)
        ):
            raise bad("it must be 3 ints >= 16 (Z, Y, X)")
        return tuple(value)
    elif key in ("run_dir", "output_dir"):
        if not isinstance(value, (str, os.PathLike)) or str(value) == "":
            raise bad("it must be a folder path")
        return str(value)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="PROFILE", help="validate a profile name")
    args = parser.parse_args(argv)
    if args.check is not None:
        try:
            chosen = resolve_profile_name(args.check)
        except ProfileError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        how = "a GPU is visible" if chosen == "full" else "no GPU is visible"
        note = f" ({how})" if args.check == "auto" else ""
        print(f"Profile: {chosen}{note}. Override with `make run PROFILE=quick|cpu|full`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
