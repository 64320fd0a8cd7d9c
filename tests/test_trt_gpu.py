"""Real TensorRT on a real GPU: build every tower in FP32/FP16/INT8, compare with ONNX Runtime FP32.

Marked ``gpu``; skipped with the reason when the tensorrt module, a CUDA binding (cuda-python or
pycuda) or a CUDA device is missing. Thresholds: FP16 mean cosine >= 0.999, INT8 >= 0.99 against
ORT FP32 on the calibration set's validation split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgebind.bundle.manifest import load_manifest
from edgebind.modality import ALL_MODALITIES

THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}


def _unavailable() -> str | None:
    """Why real TensorRT tests cannot run here (None when they can); checked once, at collection."""
    from edgebind._lazy import is_available
    from edgebind.engines import cuda_buffers
    from edgebind.errors import EngineError

    if not is_available("tensorrt"):
        return "TensorRT Python bindings are not installed (the 'tensorrt' extra / JetPack)"
    if cuda_buffers.cuda_library_available() is None:
        return "neither cuda-python nor pycuda is installed"
    try:
        cuda_buffers.open_cuda("auto").device_info()
    except EngineError as exc:
        return f"no usable CUDA device: {exc}"
    return None


REASON = _unavailable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def real_trt():
    import tensorrt as trt

    from edgebind.engines.cuda_buffers import open_cuda

    return trt, open_cuda("auto").device_info()


@pytest.fixture(scope="module")
def engines_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trt_engines")


@pytest.mark.parametrize("modality", [m.value for m in ALL_MODALITIES])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_onnxruntime(real_trt, tiny_bundle, tiny_calibration, engines_root, modality, precision):
    import onnxruntime as ort

    from edgebind.engines.trt_engine import open_trt_engine
    from edgebind.fidelity import compare_embeddings

    manifest = load_manifest(tiny_bundle)
    tower = manifest.tower(modality)
    x = np.load(tiny_calibration / f"{modality}.val.npy")
    ref_session = ort.InferenceSession(str(tiny_bundle / tower.artifact("fp32", "fp32").file),
                                       providers=["CPUExecutionProvider"])
    ref = ref_session.run(None, {tower.input.name: x})[0]
    with open_trt_engine(tiny_bundle, manifest, modality, precision, engines_root=engines_root) as eng:
        out = eng.run(x)
        single = eng.run(x[:1])
    stats = compare_embeddings(ref, out)
    assert stats["mean_cosine"] >= THRESHOLDS[precision], (modality, precision, stats)
    assert compare_embeddings(out[:1], single)["min_cosine"] > 0.999  # batch 1 and batch N agree
    with open_trt_engine(tiny_bundle, manifest, modality, precision, engines_root=engines_root, build=False) as again:
        assert "from cache" in again.reason


def test_list_cached_engines_on_this_device(real_trt, tiny_bundle, engines_root):
    from edgebind.engines import cache as C
    from edgebind.engines.cuda_buffers import open_cuda
    from edgebind.engines.trt_engine import open_trt_engine

    trt, _ = real_trt
    with open_trt_engine(tiny_bundle, None, "imu", "fp16", engines_root=engines_root):
        pass
    env = C.detect_environment(trt, open_cuda("auto"))
    rows = C.list_cached_engines(engines_root, env, bundle_dir=tiny_bundle)
    assert rows and all(r["status"] == "valid" for r in rows), rows
