"""Helpers for the 3D U-Net volumetric segmentation course.

One module per job: ``config`` (profiles), ``io`` (reading and writing volumes),
``datasets`` (embedded data), ``preprocessing``, ``patches``, ``inference``,
``model``, ``training``, ``metrics``, ``viz`` and ``runner`` (executes the course).

Importing this package is cheap: it does not import TensorFlow, Keras or NumPy.

Axis convention, used by every helper and notebook: a volume array is indexed
``[z, y, x]`` (or ``[z, y, x, channel]``), slices first, like a TIFF or DICOM
stack. Its 4x4 ``affine`` follows NIfTI: it maps the column vector
``(x, y, z, 1)`` of voxel indices to world RAS+ millimetres. Only ``helpers.io``
converts between this and the on-disk layouts.
"""

__version__ = "0.1.0"
