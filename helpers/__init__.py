"""Helpers for the 3D U-Net volumetric segmentation course.

One module per job, data flowing one way:

- ``config`` (profiles and parameters), ``fetch`` (a Decathlon task downloaded and
  checked), ``io`` (volumes in every format, atomic writes, the validators),
  ``zarr_volumes`` (chunked volumes on disk with their affine);
- ``geometry`` (align, reorient, resample and invert), ``preprocessing``
  (normalisation), ``case_cache`` (cases preprocessed once to disk, read back as
  memory maps), ``splits`` (train / val / test), ``datasets`` (dataset folders
  and the embedded data), ``patches`` (windows, padding, blending);
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

``experiment`` is the notebooks' thin glue: :func:`~helpers.experiment.prepare` (the
dataset of a parameter set), ``patch_shape``, ``make_samplers``, ``start_run``
(``model.json``), ``train_from_params``, ``ensure_model`` and ``load_trained``.

Importing this package is cheap: it does not import TensorFlow, Keras or NumPy; on x86
CPUs it turns on TensorFlow's oneDNN kernels for the process (see below).

Axis convention, used by every helper and notebook: a volume array is indexed
``[z, y, x]`` (or ``[z, y, x, channel]``), slices first, like a TIFF or DICOM
stack. Its 4x4 ``affine`` follows NIfTI: it maps the column vector
``(x, y, z, 1)`` of voxel indices to world RAS+ millimetres. Only ``helpers.io``
(and its chunked twin ``helpers.zarr_volumes``) converts between this and the on-disk
layouts.
"""

import os as _os
import platform as _platform
import sys as _sys

__version__ = "0.1.0"

# TensorFlow turns its oneDNN kernels on by itself only on x86 CPUs with AVX-512 VNNI,
# BF16 or AMX. Without them (an AMD EPYC with AVX2, most laptops) one training step of
# the U-Net took 68 s instead of 0.94 s: the gradient of its 7x7x7 stride-2 first
# convolution falls back to a naive kernel (docs/benchmarks.md). It must be set before
# TensorFlow is imported, which every helper that needs it does after this package.
# Imported after TensorFlow, it can only warn: the setting comes too late for this process.
if _platform.machine().lower() in ("x86_64", "amd64"):
    if "tensorflow" in _sys.modules and "TF_ENABLE_ONEDNN_OPTS" not in _os.environ:
        import warnings as _warnings

        _warnings.warn(
            "TensorFlow was imported before helpers, so its oneDNN CPU kernels may be off and "
            "training the U-Net can be up to 70x slower on this CPU. Import helpers first (or "
            "set TF_ENABLE_ONEDNN_OPTS=1 before starting Python), then restart.",
            RuntimeWarning,
            stacklevel=2,
        )
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
