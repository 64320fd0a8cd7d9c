"""TensorRT backend control flow on fake TensorRT 8.5 / 10.x / 11.x and fake CUDA (no GPU needed).

The fakes (tests/fakes) mirror the real bindings' API surface and version differences and really
compute (a plan embeds the ONNX, executed with onnxruntime on the bytes at the tensor addresses),
so these tests check which builder flags, network flags, profiles, pool limits, timing-cache and
calibrator calls happen, the runner's call order and buffer reuse, and that outputs equal ORT's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgebind.bundle.manifest import load_manifest
from edgebind.engines import cache as C
from edgebind.engines.cuda_buffers import default_workspace_bytes, open_cuda
from edgebind.engines.trt_build import TrtBuildConfig, ensure_engine, probe_capabilities, resolve_recipe
from edgebind.engines.trt_engine import open_trt_engine
from edgebind.errors import ConfigError, EngineError, MissingDependencyError
from fakes import FakeGpu, install

GIB = 1 << 30


def _ort(bundle: Path, modality: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    manifest = load_manifest(bundle)
    tower = manifest.tower(modality)
    session = ort.InferenceSession(str(bundle / tower.artifact("fp32", "fp32").file), providers=["CPUExecutionProvider"])
    return session.run(None, {tower.input.name: x})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _sidecar(plan: Path) -> dict:
    return json.loads(plan.with_suffix(".json").read_text())


# -- which flags / profiles / pools / caches per version and precision ------------------------------------------------
EXPECTED = {
    # version: precision -> (network flags, builder flags, strongly typed, source form)
    "8.5": {"fp32": ((("EXPLICIT_BATCH",)), [], False, "fp32"),
            "fp16": (("EXPLICIT_BATCH",), ["FP16"], False, "fp32"),
            "int8": (("EXPLICIT_BATCH",), ["FP16", "INT8"], False, "int8-qdq")},
    "10": {"fp32": ((), [], False, "fp32"),
           "fp16": ((), ["FP16"], False, "fp32"),
           "int8": ((), ["FP16", "INT8"], False, "int8-qdq")},
    "11": {"fp32": ((), [], True, "fp32"),
           "fp16": ((), [], True, "fp16"),
           "int8": ((), [], True, "int8-qdq")},
}


@pytest.mark.parametrize("version", ["8.5", "10", "11"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_builder_calls_per_version_and_precision(monkeypatch, tiny_bundle, tmp_path, version, precision):
    stack = install(monkeypatch, version)
    net_flags, flags, strong, source = EXPECTED[version][precision]
    with open_trt_engine(tiny_bundle, None, "vision", precision, engines_root=tmp_path, builder_optimization_level=4) as eng:
        assert (eng.precision, eng.form) == (precision, "int8-qdq" if precision == "int8" else precision)
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
        assert _cosine(eng.run(x), _ort(tiny_bundle, "vision", x)).min() > 0.999
    assert stack.named("Builder.create_network") == [("Builder.create_network", net_flags)]
    record = stack.build_record()
    assert record["flags"] == flags and record["strongly_typed"] is strong and record["calibration"] is None
    assert stack.named("OnnxParser.parse_from_file") == [("OnnxParser.parse_from_file", f"imagebind_tiny.vision.{source}.onnx")]
    # one profile over the batch range; the workspace pool limited; timing cache created, set and saved
    assert stack.named("IOptimizationProfile.set_shape") == [
        ("IOptimizationProfile.set_shape", "image", (1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))]
    assert stack.named("IBuilderConfig.add_optimization_profile")
    assert stack.named("IBuilderConfig.set_memory_pool_limit") == [("IBuilderConfig.set_memory_pool_limit", "WORKSPACE", GIB)]
    assert [c[0] for c in stack.named("IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache")][:2] == [
        "IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache"]
    assert (tmp_path / "imagebind_tiny" / "timing.cache").stat().st_size > 0
    # builder_optimization_level exists from 8.6: set on 10/11, reported as ignored on 8.5
    levels = stack.named("IBuilderConfig.builder_optimization_level")
    sidecar = _sidecar(next((tmp_path / "imagebind_tiny").glob("*.plan")))
    if version == "8.5":
        assert levels == [] and sidecar["build"]["builder_optimization_level"] is None
        assert any("builder_optimization_level" in w for w in sidecar["build"]["warnings"])
    else:
        assert levels == [("IBuilderConfig.builder_optimization_level", 4)]
    assert not stack.named("IBuilderConfig.int8_calibrator", "calibrator.")
    assert sidecar["key"]["build_mode"] == sidecar["build"]["build_mode"]


def test_fp16_strongly_typed_on_10_uses_the_fp16_onnx(monkeypatch, tiny_bundle, tmp_path):
    stack = install(monkeypatch, "10")
    with open_trt_engine(tiny_bundle, None, "vision", "fp16", engines_root=tmp_path, fp16_mode="strongly-typed") as eng:
        assert eng.key.build_mode == "strongly-typed" and eng.key.source_file.endswith(".fp16.onnx")
    assert stack.named("Builder.create_network") == [("Builder.create_network", ("STRONGLY_TYPED",))]
    assert stack.build_record()["flags"] == [] and stack.build_record()["strongly_typed"] is True


@pytest.mark.parametrize("version, mode, message", [
    ("11", {"fp16_mode": "flag"}, "removed in 11"),
    ("8.5", {"fp16_mode": "strongly-typed"}, "no strongly typed networks"),
    ("11", {"int8_mode": "calibrator", "calibration": "x"}, "int8_mode='qdq'"),
])
def test_unavailable_precision_paths_are_refused_clearly(monkeypatch, tiny_bundle, tmp_path, version, mode, message):
    stack = install(monkeypatch, version)
    precision = "int8" if "int8_mode" in mode else "fp16"
    with pytest.raises(EngineError, match=message):
        open_trt_engine(tiny_bundle, None, "vision", precision, engines_root=tmp_path, **mode)
    assert not stack.named("Builder.build_serialized_network")


def test_capabilities_are_probed_not_guessed(monkeypatch):
    caps = {v: probe_capabilities(install(monkeypatch, v).trt) for v in ("8.5", "8.6", "10", "11")}
    assert caps["8.5"].explicit_batch_flag and not caps["8.5"].strongly_typed and not caps["8.5"].optimization_level
    assert caps["8.6"].optimization_level and caps["8.6"].calibrator
    assert not caps["10"].explicit_batch_flag and caps["10"].strongly_typed and caps["10"].fp16_flag
    assert caps["11"].always_strongly_typed and not caps["11"].fp16_flag and not caps["11"].calibrator
    available = {("fp32", "fp32"), ("fp16", "fp16")}
    recipe = resolve_recipe("fp16", caps["10"], TrtBuildConfig(), available, prefer_fp16_source=True)
    assert (recipe.source_form, recipe.build_mode) == ("fp16", "fp16-flag")  # 8 GB boards: FP16 ONNX halves build RAM
    with pytest.raises(EngineError, match="lacks"):
        resolve_recipe("int8", caps["10"], TrtBuildConfig(), available)


@pytest.mark.parametrize("version", ["8.5", "10"])
def test_legacy_int8_calibrator_feeds_shards_and_writes_a_cache(monkeypatch, tiny_bundle, tiny_calibration, tmp_path, version):
    stack = install(monkeypatch, version)
    opts = dict(engines_root=tmp_path, int8_mode="calibrator", calibration=str(tiny_calibration), calibration_batch_size=2)
    with open_trt_engine(tiny_bundle, None, "vision", "int8", **opts) as eng:
        assert (eng.form, eng.key.build_mode, eng.key.source_file) == ("int8-calib", "int8-calibrator",
                                                                       "imagebind_tiny.vision.fp32.onnx")
    record = stack.build_record()
    n_rows = len(np.load(tiny_calibration / "vision.calib.npy", mmap_mode="r"))
    assert record["flags"] == ["FP16", "INT8"] and record["calibration"] == {"from_cache": False, "batches": n_rows // 2}
    assert [c[1] for c in stack.named("IBuilderConfig.set_calibration_profile")] == [{"image": ((2, 3, 224, 224),) * 3}]
    assert stack.named("IBuilderConfig.int8_calibrator") == [("IBuilderConfig.int8_calibrator", "EntropyCalibrator")]
    caches = list((tmp_path / "imagebind_tiny").glob("*.calib.cache"))
    assert len(caches) == 1 and caches[0].read_text().startswith("TRT-")
    # a rebuild (the plan is gone) reuses the calibration cache instead of calibrating again
    plan = next((tmp_path / "imagebind_tiny").glob("*.plan"))
    C.invalidate_plan(plan, "test")
    with open_trt_engine(tiny_bundle, None, "vision", "int8", **opts):
        pass
    assert stack.build_record()["calibration"] == {"from_cache": True, "batches": 0}
    assert not stack.gpu.device and not stack.gpu.host  # calibrator and engines freed all device/pinned memory


def test_calibrator_needs_a_calibration_set(monkeypatch, tiny_bundle, tmp_path):
    install(monkeypatch, "10")
    with pytest.raises(ConfigError, match="calibration"):
        open_trt_engine(tiny_bundle, None, "vision", "int8", engines_root=tmp_path, int8_mode="calibrator")


def test_workspace_and_profile_options(monkeypatch, tiny_bundle, tmp_path):
    stack = install(monkeypatch, "10")
    with open_trt_engine(tiny_bundle, None, "imu", "fp32", engines_root=tmp_path, workspace_mb=256, batch_profile=(2, 4, 16)):
        pass
    assert stack.named("IBuilderConfig.set_memory_pool_limit") == [("IBuilderConfig.set_memory_pool_limit", "WORKSPACE", 256 << 20)]
    assert stack.named("IOptimizationProfile.set_shape")[0][2:] == ((2, 6, 2000), (4, 6, 2000), (16, 6, 2000))
    assert default_workspace_bytes(free_bytes=6 * GIB, total_bytes=8 * GIB) == GIB        # Orin Nano: capped at 1 GiB
    assert default_workspace_bytes(free_bytes=1 * GIB, total_bytes=8 * GIB) == GIB // 2   # half of what is free
    assert default_workspace_bytes(free_bytes=60 * GIB, total_bytes=64 * GIB) == 4 * GIB  # big boards: 4 GiB
    assert default_workspace_bytes(free_bytes=10 << 20, total_bytes=8 * GIB) == 64 << 20  # never below 64 MiB
    with pytest.raises(ConfigError, match="batch_profile"):
        TrtBuildConfig(batch_profile=(4, 2, 8))
    with pytest.raises(ConfigError, match="unknown option"):
        open_trt_engine(tiny_bundle, None, "imu", "fp32", engines_root=tmp_path, workspace=1)


def test_timing_cache_is_reused_by_the_next_build(monkeypatch, tiny_bundle, tmp_path):
    stack = install(monkeypatch, "10")
    with open_trt_engine(tiny_bundle, None, "vision", "fp32", engines_root=tmp_path):
        pass
    assert stack.build_record()["timing_hits"] == 0
    C.invalidate_plan(next((tmp_path / "imagebind_tiny").glob("*.plan")), "test")
    with open_trt_engine(tiny_bundle, None, "vision", "fp32", engines_root=tmp_path):
        pass
    record = stack.build_record()
    assert record["timing_hits"] == record["nodes"] > 0
    # a timing cache from another TensorRT is not applied (set_timing_cache -> False) and a fresh one is used
    stack86 = install(monkeypatch, "8.6")
    with open_trt_engine(tiny_bundle, None, "vision", "fp32", engines_root=tmp_path):
        pass
    assert stack86.build_record()["timing_hits"] == 0
    warnings = _sidecar(next((tmp_path / "imagebind_tiny").glob("*trt8.6*.plan")))["build"]["warnings"]
    assert any("another TensorRT" in w for w in warnings)


# -- the runner ---------------------------------------------------------------------------------------------------------
def test_runner_call_sequence_buffer_reuse_and_close(monkeypatch, tiny_bundle, tmp_path):
    stack = install(monkeypatch, "10")
    eng = open_trt_engine(tiny_bundle, None, "vision", "fp32", engines_root=tmp_path)
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    stack.calls.clear()
    y = eng.run(x)
    np.testing.assert_allclose(y, _ort(tiny_bundle, "vision", x), rtol=1e-5, atol=1e-6)
    order = [(c[0], c[1] if c[0] in ("cudaMemcpyAsync", "IExecutionContext.set_tensor_address") else None)
             for c in stack.named("IExecutionContext.", "cudaMemcpyAsync", "cudaStreamSynchronize")]
    assert order == [("IExecutionContext.set_input_shape", None), ("IExecutionContext.set_tensor_address", "image"),
                     ("IExecutionContext.set_tensor_address", "embedding"), ("cudaMemcpyAsync", "H2D"),
                     ("IExecutionContext.execute_async_v3", None), ("cudaMemcpyAsync", "D2H"), ("cudaStreamSynchronize", None)]
    assert stack.named("IExecutionContext.set_input_shape")[0][2] == (3, 3, 224, 224)
    def allocations() -> int:
        return sum(c[0] in ("cudaMalloc", "cudaMallocHost") for c in stack.calls)

    before = allocations()
    eng.run(x)
    assert allocations() == before  # same batch size: buffers reused
    eng.run(x[:1])
    assert allocations() == before + 4  # new batch size: pinned + device for the input and the output
    assert eng.buffer_pool.batch_sizes("image") == [1, 3]
    big = np.concatenate([x] * 4)  # 12 > max batch 8: run as 8 + 4
    stack.calls.clear()
    np.testing.assert_allclose(eng.run(big), np.concatenate([y] * 4), rtol=1e-5, atol=1e-6)
    assert len(stack.named("IExecutionContext.execute_async_v3")) == 2
    assert stack.gpu.device and stack.gpu.host
    eng.close()
    eng.close()
    assert not stack.gpu.device and not stack.gpu.host and not stack.gpu.streams  # everything freed, idempotently
    with pytest.raises(EngineError, match="closed"):
        eng.run(x)


def test_text_tower_int64_tokens_become_int32_on_trt85(monkeypatch, tiny_bundle, tiny_calibration, tmp_path):
    install(monkeypatch, "8.5")
    tokens = np.load(tiny_calibration / "text.val.npy")[:3]
    with open_trt_engine(tiny_bundle, None, "text", "fp32", engines_root=tmp_path) as eng:
        assert eng.input_dtype == np.int32 and eng.input_spec.dtype == "int64"
        np.testing.assert_allclose(eng.run(tokens), _ort(tiny_bundle, "text", tokens), rtol=1e-5, atol=1e-6)
        with pytest.raises(EngineError, match="outside int32"):
            eng.run(np.full_like(tokens, 1 << 40))
    warnings = _sidecar(next((tmp_path / "imagebind_tiny").glob("*.plan")))["build"]["warnings"]
    assert any("INT64" in w for w in warnings)  # TensorRT's own warning is kept in the sidecar


def test_text_tower_keeps_int64_on_trt10(monkeypatch, tiny_bundle, tiny_calibration, tmp_path):
    install(monkeypatch, "10")
    tokens = np.load(tiny_calibration / "text.val.npy")[:2]
    with open_trt_engine(tiny_bundle, None, "text", "int8", engines_root=tmp_path) as eng:
        assert eng.input_dtype == np.int64
        assert _cosine(eng.run(tokens.astype(np.int32)), _ort(tiny_bundle, "text", tokens)).min() > 0.99


@pytest.mark.parametrize("cuda", ["pycuda", "cuda-python-legacy"])
def test_other_cuda_bindings(monkeypatch, tiny_bundle, tmp_path, cuda):
    stack = install(monkeypatch, "8.5", cuda=cuda)
    x = np.random.default_rng(2).standard_normal((2, 6, 2000)).astype(np.float32)
    with open_trt_engine(tiny_bundle, None, "imu", "fp16", engines_root=tmp_path, cuda="auto") as eng:
        assert _cosine(eng.run(x), _ort(tiny_bundle, "imu", x)).min() > 0.999
        expected = {"pycuda": "PyCudaRuntime", "cuda-python-legacy": "CudaPythonRuntime"}[cuda]
        assert type(eng._cuda).__name__ == expected
    if cuda == "pycuda":
        assert stack.named("memcpy_htod_async") and stack.named("Stream.synchronize")
    assert not stack.gpu.device and not stack.gpu.host


def test_missing_tensorrt_or_cuda_names_the_extra(monkeypatch, tiny_bundle, tmp_path):
    install(monkeypatch, None)
    with pytest.raises(MissingDependencyError) as info:
        open_trt_engine(tiny_bundle, None, "vision", "fp32", engines_root=tmp_path)
    assert info.value.extra == "tensorrt" and "tensorrt" in str(info.value)
    install(monkeypatch, "10", cuda=None)
    with pytest.raises(MissingDependencyError) as info:
        open_trt_engine(tiny_bundle, None, "vision", "fp32", engines_root=tmp_path)
    assert info.value.extra == "tensorrt" and "cuda-python" in str(info.value)
    install(monkeypatch, "10", gpu=FakeGpu(present=False))
    with pytest.raises(EngineError, match="cudaSetDevice failed with cudaErrorNoDevice"):
        open_cuda("auto")
    with pytest.raises(ConfigError, match="cuda"):
        open_cuda("opencl")


def test_no_cache_root_builds_in_a_temporary_folder(monkeypatch, tiny_bundle, tmp_path):
    install(monkeypatch, "10")
    with open_trt_engine(tiny_bundle, None, "imu", "fp32", engines_root=None) as eng:
        assert eng.run(np.zeros((1, 6, 2000), np.float32)).shape == (1, 64)
        assert not eng.plan_path.exists()  # the temporary cache is gone once the plan is loaded
    with pytest.raises(EngineError, match="build=True"):
        open_trt_engine(tiny_bundle, None, "imu", "fp32", engines_root=None, build=False)


def test_ensure_engine_reports_what_it_did(monkeypatch, tiny_bundle, tmp_path):
    install(monkeypatch, "10")
    manifest = load_manifest(tiny_bundle)
    plan, key, built = ensure_engine(tiny_bundle, manifest, "depth", "fp16", engines_root=tmp_path)
    assert built and plan.name == "imagebind_tiny.depth.fp16.orin-sm87-trt10.3.0.plan" and key.build_mode == "fp16-flag"
    assert ensure_engine(tiny_bundle, manifest, "depth", "fp16", engines_root=tmp_path) == (plan, key, False)


def test_low_memory_boards_build_from_the_fp16_onnx_and_get_a_warning(monkeypatch, tiny_bundle, tmp_path):
    from edgebind.engines import trt_build

    stack = install(monkeypatch, "10")
    fp32_bytes = load_manifest(tiny_bundle).tower("text").artifact("fp32", "fp32").size_bytes
    # a "board" whose RAM is below twice the FP32 text tower: the FP16 ONNX is parsed, and the build warns
    monkeypatch.setattr(trt_build, "meminfo", lambda: {"MemTotal": fp32_bytes, "MemAvailable": fp32_bytes // 2})
    with open_trt_engine(tiny_bundle, None, "text", "fp16", engines_root=tmp_path) as eng:
        assert eng.key.build_mode == "fp16-flag" and eng.key.source_file.endswith(".fp16.onnx")
    assert stack.named("OnnxParser.parse_from_file")[0][1] == "imagebind_tiny.text.fp16.onnx"
    warnings = _sidecar(eng.plan_path)["build"]["warnings"]
    assert any("twice the model size" in w for w in warnings)
