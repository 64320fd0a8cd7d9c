"""ONNX Runtime engines on the tiny bundle: outputs, backend/precision choice, caches, input checks, provider options."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgebind.bundle.manifest import load_manifest
from edgebind.calibration import CalibrationSet
from edgebind.engines import OrtConfig, open_engine
from edgebind.engines import select as select_mod
from edgebind.engines.ort_engine import (
    SIDECAR,
    cache_key,
    cuda_provider_options,
    provider_chain,
    tensorrt_provider_options,
)
from edgebind.engines.select import Availability, build_engines, choose_artifacts, choose_backend
from edgebind.errors import EngineError, ManifestError, MissingDependencyError

ALL = ("vision", "text", "audio", "depth", "thermal", "imu")
FORMS = ("fp32", "fp16", "int8-qdq", "int8-dynamic")
CPU_ONLY = Availability(tensorrt=False, tensorrt_reason="module 'tensorrt' not importable", gpu=False,
                        gpu_reason="no GPU", ort_providers=("CPUExecutionProvider",))


@pytest.fixture(scope="module")
def val_rows(tiny_calibration):
    calib = CalibrationSet.open(tiny_calibration)
    return {m: np.asarray(calib.val(m)[:3]) for m in ALL}


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out


@pytest.mark.parametrize("modality", ALL)
def test_every_form_matches_a_plain_ort_session(tiny_bundle, val_rows, tmp_path, modality):
    tower = load_manifest(tiny_bundle).tower(modality)
    rows = val_rows[modality]
    assert {a.form for a in tower.artifacts} == set(FORMS)
    for art in tower.artifacts:
        path = os.fspath(tiny_bundle / art.file)
        try:
            raw = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - some FP16 files do not load on ORT's CPU EP
            # The engine must refuse the same file with an EngineError naming it, not crash or hide it.
            with pytest.raises(EngineError, match=art.file):
                open_engine(tiny_bundle, modality, backend="onnxruntime-cpu", precision=art.form,
                            engines_root=tmp_path, availability=CPU_ONLY)
            assert "onnxruntime" in str(exc).lower() or "type" in str(exc).lower()
            continue
        want = raw.run([tower.output.name], {tower.input.name: rows})[0]
        with open_engine(tiny_bundle, modality, backend="onnxruntime-cpu", precision=art.form,
                         engines_root=tmp_path, availability=CPU_ONLY) as engine:
            got = engine.run(rows)
            assert (engine.backend, engine.form, engine.precision) == ("onnxruntime-cpu", art.form, art.precision)
            assert engine.input_spec == tower.input and engine.output_spec == tower.output
            assert engine.last_latency_s is not None and engine.last_latency_s > 0
        assert got.dtype == np.float32 and got.shape == (len(rows), tower.output.shape[1])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_auto_picks_int8_dynamic_on_cpu_and_says_why(tiny_bundle, tmp_path):
    engine = open_engine(tiny_bundle, "audio", engines_root=tmp_path, availability=CPU_ONLY)
    assert (engine.backend, engine.form) == ("onnxruntime-cpu", "int8-dynamic")
    assert engine.reason.startswith("onnxruntime-cpu: TensorRT absent")
    assert "CUDA EP not available" in engine.reason
    assert "int8-dynamic chosen: recorded mean cosine" in engine.reason and ">= 0.99" in engine.reason
    assert "FP16 is not faster on CPU" in engine.reason
    assert "int8-dynamic" in repr(engine) and "onnxruntime-cpu" in repr(engine)
    engine.close()


def test_auto_falls_back_to_fp32_when_int8_fidelity_is_too_low(tiny_bundle, tmp_path):
    with open_engine(tiny_bundle, "depth", engines_root=tmp_path, availability=CPU_ONLY,
                     thresholds={"int8": 1.01}) as engine:
        assert engine.form == "fp32"
        assert "int8-dynamic skipped: recorded mean cosine" in engine.reason and "< 1.01" in engine.reason


def test_auto_tries_the_next_artifact_when_one_fails_to_load(tiny_bundle, tmp_path, monkeypatch):
    real = select_mod.open_ort_engine

    def flaky(bundle_dir, model, modality, tower, artifact, **kw):
        if artifact.form == "int8-dynamic":
            raise EngineError("simulated load failure")
        return real(bundle_dir, model, modality, tower, artifact, **kw)

    monkeypatch.setattr(select_mod, "open_ort_engine", flaky)
    with open_engine(tiny_bundle, "imu", engines_root=tmp_path, availability=CPU_ONLY) as engine:
        assert engine.form == "fp32"
        assert "int8-dynamic failed to open (simulated load failure)" in engine.reason
    with pytest.raises(EngineError, match="simulated"):  # an explicit request is never swapped
        open_engine(tiny_bundle, "imu", precision="int8", engines_root=tmp_path, availability=CPU_ONLY)


def test_missing_provider_falls_back_for_auto_and_raises_when_explicit(tiny_bundle, tmp_path):
    pretend_cuda = Availability(tensorrt=False, tensorrt_reason="absent", gpu=True, gpu_reason="GPU X",
                                ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime really has the CUDA EP; the fallback path cannot be provoked")
    with open_engine(tiny_bundle, "text", engines_root=tmp_path, availability=pretend_cuda) as engine:
        assert engine.form == "fp16"  # what auto picks for CUDA
        assert engine.backend == "onnxruntime-cpu" and "fell back to onnxruntime-cpu" in engine.reason
        assert engine.run(engine.example_input(2)).shape == (2, 64)
    with pytest.raises(EngineError, match="did not enable CUDAExecutionProvider"):
        open_engine(tiny_bundle, "text", backend="onnxruntime-cuda", engines_root=tmp_path, availability=pretend_cuda)


def test_explicit_requests_that_cannot_be_honoured(tiny_bundle, tmp_path):
    with pytest.raises(MissingDependencyError, match=r"edgebind\[tensorrt\]"):
        open_engine(tiny_bundle, "vision", backend="tensorrt", availability=CPU_ONLY)
    with pytest.raises(EngineError, match="no CUDAExecutionProvider.*CPUExecutionProvider"):
        open_engine(tiny_bundle, "vision", backend="onnxruntime-cuda", availability=CPU_ONLY)
    with pytest.raises(EngineError, match="unknown backend"):
        open_engine(tiny_bundle, "vision", backend="cuda", availability=CPU_ONLY)
    with pytest.raises(EngineError, match="unknown precision"):
        open_engine(tiny_bundle, "vision", precision="int4", availability=CPU_ONLY)
    trt_no_gpu = Availability(tensorrt=True, tensorrt_reason="TensorRT 10.3", gpu=False, gpu_reason="no GPU found",
                              ort_providers=("CPUExecutionProvider",))
    with pytest.raises(EngineError, match="needs a CUDA GPU: no GPU found"):
        choose_backend("tensorrt", trt_no_gpu)
    tower = load_manifest(tiny_bundle).tower("vision")
    with pytest.raises(EngineError, match="int8-dynamic"):
        choose_artifacts(tower, "tensorrt", "int8-dynamic")
    fp32_only = type(tower)(input=tower.input, output=tower.output, logit_scale=tower.logit_scale,
                            artifacts=tuple(a for a in tower.artifacts if a.form == "fp32"))
    with pytest.raises(EngineError, match="no fp16 artifact.*it has fp32"):
        choose_artifacts(fp32_only, "onnxruntime-cpu", "fp16")


def test_backend_choice_prefers_tensorrt_then_eps(tiny_bundle):
    full = Availability(tensorrt=True, tensorrt_reason="TensorRT 10.3.0", gpu=True, gpu_reason="GPU Orin (compute 8.7)",
                        ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    assert choose_backend("auto", full) == ("tensorrt", "TensorRT 10.3.0 and GPU Orin (compute 8.7) present")
    assert choose_backend("onnxruntime", full)[0] == "onnxruntime-tensorrt"
    no_trt_module = dataclasses_replace(full, tensorrt=False, tensorrt_reason="not importable")
    backend, why = choose_backend("auto", no_trt_module)
    assert backend == "onnxruntime-tensorrt" and "TensorRT absent: not importable" in why
    assert choose_backend("auto", full, providers=["CUDAExecutionProvider"])[0] == "onnxruntime-cuda"
    tower = load_manifest(tiny_bundle).tower("vision")
    picks = choose_artifacts(tower, "tensorrt")
    assert [a.form for a, _ in picks] == ["fp16", "fp32"] and "int8-qdq is opt-in" in picks[0][1]
    assert choose_artifacts(tower, "onnxruntime-tensorrt", "int8")[0][0].form == "int8-qdq"
    assert choose_artifacts(tower, "onnxruntime-cpu", "int8")[0][0].form == "int8-dynamic"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_tampered_onnx_is_refused_even_with_a_fallback_available(bundle_copy, tmp_path):
    art = load_manifest(bundle_copy).artifact("thermal", "int8", "int8-dynamic")
    path = bundle_copy / art.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=f"{art.file}: sha256 .* does not match"):
        open_engine(bundle_copy, "thermal", engines_root=tmp_path, availability=CPU_ONLY)
    with open_engine(bundle_copy, "thermal", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY) as e:
        assert e.form == "fp32"  # the other artifacts are still fine


def test_optimized_model_cache_is_reused_then_rebuilt_when_stale(tiny_bundle, tmp_path, val_rows):
    first = open_engine(tiny_bundle, "vision", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY)
    assert first.cache["status"] == "created"
    folder = Path(first.cache["folder"])
    assert folder.parent == tmp_path / "imagebind_tiny" / "ort" and folder.name.startswith("vision.fp32.")
    assert folder.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's private 0700
    optimized = folder / "optimized.onnx"
    stamp = optimized.stat().st_mtime_ns
    want = first.run(val_rows["vision"])
    first.close()
    second = open_engine(tiny_bundle, "vision", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY)
    assert second.cache["status"] == "hit" and optimized.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(second.run(val_rows["vision"]), want, rtol=1e-5, atol=1e-6)
    second.close()
    record = json.loads((folder / SIDECAR).read_text())
    assert record["source_sha256"] == load_manifest(tiny_bundle).artifact("vision", "fp32").sha256
    record["onnxruntime"] = "0.1.0"
    (folder / SIDECAR).write_text(json.dumps(record))
    third = open_engine(tiny_bundle, "vision", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY)
    assert third.cache["status"] == "rebuilt: onnxruntime was '0.1.0' when the cache was made, now " \
                                    f"'{ort.__version__}'"
    assert json.loads((folder / SIDECAR).read_text())["onnxruntime"] == ort.__version__
    third.close()
    no_cache = open_engine(tiny_bundle, "vision", precision="fp32", engines_root=None, availability=CPU_ONLY)
    assert no_cache.cache == {"status": "off", "folder": None}
    no_cache.close()


def test_corrupt_cached_model_is_discarded(tiny_bundle, tmp_path):
    with open_engine(tiny_bundle, "imu", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY) as e:
        folder = Path(e.cache["folder"])
    (folder / "optimized.onnx").write_bytes(b"not an onnx model")
    with open_engine(tiny_bundle, "imu", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY) as e:
        assert e.cache["status"] == "created" and e.run(e.example_input(1)).shape == (1, 64)
    assert (folder / "optimized.onnx").stat().st_size > 1000


def test_input_validation(tiny_bundle, tmp_path):
    with open_engine(tiny_bundle, "text", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY) as text:
        tokens = text.example_input(2)
        ref = text.run(tokens)
        np.testing.assert_array_equal(text.run(tokens.astype(np.int32)), ref)  # int32 -> int64
        with pytest.raises(EngineError, match=r"dim 1 is 10, expected 77; expected shape tokens\[batch, 77\] int64"):
            text.run(tokens[:, :10])
        with pytest.raises(EngineError, match="int32 or int64 token ids"):
            text.run(tokens.astype(np.float32))
        with pytest.raises(EngineError, match="rank 1"):
            text.run(tokens[0])
        with pytest.raises(EngineError, match="empty batch"):
            text.run(tokens[:0])
    with open_engine(tiny_bundle, "imu", precision="fp32", engines_root=tmp_path, availability=CPU_ONLY) as imu:
        x = np.random.default_rng(0).standard_normal((2, 6, 2000))
        np.testing.assert_allclose(imu.run(x), imu.run(x.astype(np.float32)), rtol=1e-6)  # float64 -> float32
        with pytest.raises(EngineError, match="expected a float array"):
            imu.run(x.astype(np.int64))
        with pytest.raises(EngineError, match=r"dim 1 is 3, expected 6"):
            imu.run(x[:, :3])


def test_close_is_idempotent_and_final(tiny_bundle, tmp_path):
    engine = open_engine(tiny_bundle, "depth", engines_root=tmp_path, availability=CPU_ONLY)
    engine.warmup(2)
    assert engine.last_latency_s is not None
    engine.close()
    engine.close()
    assert engine.closed and "closed" in repr(engine)
    with pytest.raises(EngineError, match="closed"):
        engine.run(engine.example_input(1))
    with open_engine(tiny_bundle, "depth", engines_root=tmp_path, availability=CPU_ONLY) as ctx:
        pass
    assert ctx.closed


def test_build_engines_fills_the_caches(tiny_bundle, tmp_path):
    report = build_engines(tiny_bundle, engines_root=tmp_path, availability=CPU_ONLY)
    assert report.ok and report.backend == "onnxruntime-cpu"
    assert [r["tower"] for r in report.rows] == list(ALL)
    assert all(r["form"] == "int8-dynamic" and r["cache"]["status"] == "created" for r in report.rows)
    again = build_engines(tiny_bundle, engines_root=tmp_path, precisions=["fp32", "int8"], modalities=["text"],
                          availability=CPU_ONLY, refresh=True)
    assert [(r["form"], r["cache"]["status"]) for r in again.rows] == [("fp32", "created"),
                                                                      ("int8-dynamic", "rebuilt: refresh requested")]
    with pytest.raises(MissingDependencyError):
        build_engines(tiny_bundle, backend="tensorrt", engines_root=tmp_path, availability=CPU_ONLY)


# -- provider options as pure functions -----------------------------------------------------------
def _spec(tiny_bundle, modality="text"):
    return load_manifest(tiny_bundle).tower(modality).input


def test_tensorrt_ep_options_per_form(tiny_bundle, tmp_path):
    spec = _spec(tiny_bundle)
    kw = dict(input_spec=spec, cache_dir=tmp_path / "eng", timing_cache_dir=tmp_path / "tim", ort_version="1.32.0")
    qdq = tensorrt_provider_options(form="int8-qdq", config=OrtConfig(), **kw)
    assert qdq["trt_int8_enable"] is True and qdq["trt_fp16_enable"] is True
    assert not any("calibration" in key for key in qdq)  # never a calibration table with Q/DQ
    assert qdq["trt_engine_cache_enable"] is True and qdq["trt_engine_cache_path"] == os.fspath(tmp_path / "eng")
    assert qdq["trt_timing_cache_enable"] is True and qdq["trt_timing_cache_path"] == os.fspath(tmp_path / "tim")
    assert qdq["trt_max_workspace_size"] == 1 << 30 and qdq["trt_builder_optimization_level"] == 3
    assert (qdq["trt_profile_min_shapes"], qdq["trt_profile_opt_shapes"], qdq["trt_profile_max_shapes"]) == \
        ("tokens:1x77", "tokens:1x77", "tokens:8x77")
    qdq_only = tensorrt_provider_options(form="int8-qdq", config=OrtConfig(trt_int8_with_fp16=False), **kw)
    assert qdq_only["trt_int8_enable"] is True and qdq_only["trt_fp16_enable"] is False
    fp16 = tensorrt_provider_options(form="fp16", config=OrtConfig(), **kw)
    assert fp16["trt_fp16_enable"] is True and fp16["trt_int8_enable"] is False
    assert fp16["trt_layer_norm_fp32_fallback"] is True
    fp32 = tensorrt_provider_options(form="fp32", config=OrtConfig(trt_builder_optimization_level=None), **kw)
    assert not fp32["trt_fp16_enable"] and not fp32["trt_int8_enable"]
    assert "trt_builder_optimization_level" not in fp32 and "trt_layer_norm_fp32_fallback" not in fp32
    old = tensorrt_provider_options(form="fp16", config=OrtConfig(), **{**kw, "ort_version": "1.14.1"})
    assert "trt_builder_optimization_level" not in old and "trt_timing_cache_path" not in old
    with pytest.raises(EngineError, match="int8-dynamic"):
        tensorrt_provider_options(form="int8-dynamic", config=OrtConfig(), **kw)
    uncached = tensorrt_provider_options(form="fp16", config=OrtConfig(),
                                         **{**kw, "cache_dir": None, "timing_cache_dir": None})
    assert uncached["trt_fp16_enable"] is True and not any("cache" in key for key in uncached)


def test_cuda_options_and_provider_chains(tiny_bundle, tmp_path):
    assert cuda_provider_options(OrtConfig(device_id=1)) == {"device_id": 1, "arena_extend_strategy": "kSameAsRequested"}
    assert cuda_provider_options(OrtConfig(gpu_mem_limit_bytes=2 << 30))["gpu_mem_limit"] == 2 << 30
    kw = dict(form="fp16", input_spec=_spec(tiny_bundle, "vision"), cache_dir=tmp_path, timing_cache_dir=tmp_path,
              config=OrtConfig(), ort_version="1.32.0")
    assert [n for n, _ in provider_chain("tensorrt", **kw)] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert [n for n, _ in provider_chain("cuda", **kw)] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain("cpu", **kw) == [("CPUExecutionProvider", {})]
    assert provider_chain("tensorrt", **kw)[0][1]["trt_profile_max_shapes"] == "image:8x3x224x224"


def test_cache_keys_never_mix(tiny_bundle):
    tower = load_manifest(tiny_bundle).tower("vision")
    keys = {cache_key("vision", a, p, OrtConfig(graph_optimization_level=lvl))
            for a in tower.artifacts for p in ("cpu", "cuda", "tensorrt") for lvl in ("basic", "all")}
    assert len(keys) == len(tower.artifacts) * (2 + 2 + 1)  # TensorRT EP keys ignore the ORT graph level
    fp32 = tower.artifact("fp32")
    assert cache_key("vision", fp32, "cpu", OrtConfig()) == f"vision.fp32.{fp32.sha256[:16]}.cpu.all"


def test_sessions_do_not_spin_wait_unless_asked(monkeypatch, tiny_bundle, tmp_path):
    from edgebind import _ort_options

    options = _ort_options.session_options(ort, threads=2, level="basic")
    assert options.get_session_config_entry(_ort_options.SPIN_KEY) == "0"
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    spinning = _ort_options.session_options(ort, spin_wait=True)
    assert spinning.get_session_config_entry(_ort_options.SPIN_KEY) == "1"

    seen = []
    real = _ort_options.session_options
    monkeypatch.setattr("edgebind.engines.ort_engine.session_options",
                        lambda *a, **k: seen.append(k["spin_wait"]) or real(*a, **k))
    for spin in (False, True):
        open_engine(tiny_bundle, "depth", backend="onnxruntime", engines_root=tmp_path / f"e{spin}",
                    config=OrtConfig(threads=1, spin_wait=spin)).close()
    assert seen == [False, True]
