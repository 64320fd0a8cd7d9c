"""Inference engines for one tower of an exported bundle (ONNX Runtime, TensorRT).

``open_engine(bundle_dir, modality, backend="auto")`` picks the fastest backend the device has and
says why in ``engine.reason``; ``verify_bundle`` scores every backend/precision against ORT FP32;
``build_engines`` fills the engine caches; ``describe`` reports the device and its caches.
Device path: never imports torch.
"""

from __future__ import annotations

from .base import BACKENDS, Engine
from .environment import describe, device_fingerprint, list_caches
from .ort_engine import OrtConfig, OrtEngine
from .select import Availability, BuildReport, build_engines, open_engine
from .verify import VerifyReport, VerifyRow, verify_bundle

__all__ = [
    "BACKENDS", "Availability", "BuildReport", "Engine", "OrtConfig", "OrtEngine", "VerifyReport", "VerifyRow",
    "build_engines", "describe", "device_fingerprint", "list_caches", "open_engine", "verify_bundle",
]
