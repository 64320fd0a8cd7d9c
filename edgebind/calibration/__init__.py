"""Calibration sets: preprocessed model inputs for INT8 calibration (calib) and fidelity checks (val).

Build one from your own files with :func:`build_from_folder` (``edgebind calibrate --from DIR``) or,
to try the pipeline, from packaged sample data with :func:`build_default_set`
(``edgebind calibrate --default``). Read it with :class:`CalibrationSet`, whose ``reader()`` plugs
into onnxruntime's ``quantize_static``. Host-side, numpy only: every row goes through the same
``edgebind.preprocess`` code the device runs. Layout and manifest: :mod:`edgebind.calibration.store`.
"""

from __future__ import annotations

from ._build import BuildResult
from .default_set import build_default_set
from .folder import build_from_folder
from .store import MANIFEST_FILE, SCHEMA_VERSION, CalibrationReader, CalibrationSet

__all__ = [
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "BuildResult",
    "CalibrationReader",
    "CalibrationSet",
    "build_default_set",
    "build_from_folder",
]
