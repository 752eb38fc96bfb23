"""Helpers for the 3D U-Net volumetric segmentation course.

One module per job, data flowing one way:

- ``config`` (profiles and parameters), ``fetch`` (a Decathlon task downloaded and
  checked), ``io`` (load and save by suffix; one module per format in ``formats``),
  ``volume`` (the type and its axes), ``checks`` (validators), ``files`` (atomic
  writes), ``memory`` (page release), ``affines``, ``label_maps`` (the one reader of
  label files), ``zarr_volumes`` (chunked volumes on disk with their affine);
- ``geometry`` (align, reorient, resample and invert), ``preprocessing``
  (normalisation), ``planning`` (a dataset's fingerprint and the plan made from it),
  ``tumours`` (a generated two-channel export), ``case_cache`` (cases preprocessed
  once to disk, read back as memory maps), ``splits`` (train / val / test), ``dataset_folder`` (a folder's
  layout and ``dataset.json``), ``preprocessor`` (each case into the cache),
  ``embedded`` and ``demos`` (the generated and shipped data), ``datasets``
  (:func:`~helpers.datasets.open_dataset`, the stages in order), ``patches`` (windows,
  padding, blending);
- ``sampling`` (the patch sampler), ``model`` (the U-Net, losses, metrics),
  ``runs`` (the locked run folder: every file in it, and the one decision where a
  training resumes, :func:`~helpers.runs.run_status`), ``training`` (Keras only:
  trains and commits each epoch);
- ``inference`` (whole-volume prediction as steps: windows, cut, predict, pipelined),
  ``stitching`` (the windows' blended sums, finalised slab by slab),
  ``postprocessing`` (largest component), ``distributed`` (blockwise prediction of
  zarr volumes on Dask), ``predict`` (new scans, the command line);
- ``metrics``, ``evaluation`` (scores per case at native resolution), ``viz``;
- ``results`` (the metrics records and ``summary.md``), ``runner`` (``make run``).

``kernel_output`` keeps C libraries' output out of Jupyter cells; ``experiment`` is the
notebooks' thin glue: :func:`~helpers.experiment.prepare` (the
dataset of a parameter set), ``patch_shape``, ``make_samplers``, ``start_run``
(``model.json``), ``train_from_params``, ``ensure_model`` and ``load_trained``.

Importing this package is cheap: it does not import TensorFlow, Keras or NumPy. It sets, where
the user has not, the environment TensorFlow reads when it loads (:data:`KERNEL_ENV`, from
:func:`helpers.config.kernel_env`): its C++ log lines off, its oneDNN kernels on x86 CPUs (see
below), and on a small-memory machine such as mybinder's its threads and malloc arenas capped.
``helpers.runner``'s notebook kernels inherit it; in Jupyter, Colab or Binder a notebook's first
cell imports helpers, before TensorFlow. The few lines TensorFlow writes through absl before
its logging starts ("oneDNN custom operations are on", "Could not find cuda drivers") ignore
``TF_CPP_MIN_LOG_LEVEL``; in a Jupyter kernel this import sends what C libraries write to the
kernel's log instead of the cell (``helpers.kernel_output``), as ``helpers.runner``'s kernels
(``--IPKernelApp.capture_fd_output=False``) and Binder's ``ipython_kernel_config.py`` do from
the start.

Axis convention, used by every helper and notebook: a volume array is indexed
``[z, y, x]`` (or ``[z, y, x, channel]``), slices first, like a TIFF or DICOM
stack. Its 4x4 ``affine`` follows NIfTI: it maps the column vector
``(x, y, z, 1)`` of voxel indices to world RAS+ millimetres (``helpers.volume``). Only
the format modules in ``helpers.formats`` (and the chunked twin ``helpers.zarr_volumes``)
convert between this and the on-disk layouts.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

from helpers.config import kernel_env as _kernel_env
from helpers.config import limit_malloc_arenas as _limit_malloc_arenas

#: What this import put in ``os.environ`` (a value the user had set is kept, and listed as set).
KERNEL_ENV = _kernel_env()

# TensorFlow turns its oneDNN kernels on by itself only on x86 CPUs with AVX-512 VNNI,
# BF16 or AMX. Without them (an AMD EPYC with AVX2, most laptops) one training step of
# the U-Net took 68 s instead of 0.94 s: the gradient of its 7x7x7 stride-2 first
# convolution falls back to a naive kernel (docs/benchmarks.md). It must be set before
# TensorFlow is imported, which every helper that needs it does after this package.
# Imported after TensorFlow, it can only warn: the setting comes too late for this process.
if "TF_ENABLE_ONEDNN_OPTS" in KERNEL_ENV:
    if "tensorflow" in _sys.modules and "TF_ENABLE_ONEDNN_OPTS" not in _os.environ:
        import warnings as _warnings

        _warnings.warn(
            "TensorFlow was imported before helpers, so its oneDNN CPU kernels may be off and "
            "training the U-Net can be up to 70x slower on this CPU. Import helpers first (or "
            "set TF_ENABLE_ONEDNN_OPTS=1 before starting Python), then restart.",
            RuntimeWarning,
            stacklevel=2,
        )
for _key, _value in KERNEL_ENV.items():
    KERNEL_ENV[_key] = _os.environ.setdefault(_key, _value)
if "MALLOC_ARENA_MAX" in KERNEL_ENV:
    _limit_malloc_arenas(int(KERNEL_ENV["MALLOC_ARENA_MAX"]))

# In a Jupyter kernel, what C libraries write to file descriptors 1 and 2 (TensorFlow's absl
# lines at import) goes to the kernel's log, not into the cell (helpers.kernel_output).
from helpers.kernel_output import release_fd_capture as _release_fd_capture  # noqa: E402

_release_fd_capture()
