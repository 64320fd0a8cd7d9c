"""The TensorRT engine cache: keys, sidecars, staleness (each key field), atomic writes, listing.

Builds run on the fake TensorRT/CUDA of tests/fakes (no GPU needed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgebind import _io
from edgebind.bundle.manifest import load_manifest, save_manifest
from edgebind.engines import cache as C
from edgebind.engines.trt_build import TrtBuildConfig, ensure_engine
from edgebind.engines.trt_engine import open_trt_engine
from edgebind.errors import EngineError
from fakes import FakeGpu, install

KEY = C.EngineCacheKey(
    model="imagebind_tiny", modality="vision", precision="fp16", form="fp16", build_mode="fp16-flag",
    source_file="imagebind_tiny.vision.fp32.onnx", onnx_sha256="a" * 64, recipe_sha256="b" * 64, input_name="image",
    profile_min=(1, 3, 224, 224), profile_opt=(1, 3, 224, 224), profile_max=(8, 3, 224, 224),
    tensorrt="10.3.0.30", gpu_name="Orin", compute_capability="8.7", l4t="36.4.0",
)


def _engines(tmp_path: Path) -> Path:
    return tmp_path / "engines"


def _plans(root: Path) -> list[Path]:
    return sorted((root / "imagebind_tiny").glob("*.plan"))


def test_plan_name_and_sidecar_roundtrip(tmp_path):
    assert KEY.plan_name() == "imagebind_tiny.vision.fp16.orin-sm87-trt10.3.0.plan"
    assert C.gpu_slug("NVIDIA GeForce RTX 4090") == "rtx-4090" and C.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    plan = tmp_path / KEY.plan_name()
    sidecar = C.publish_plan(plan, b"\x01" * 1000, KEY, {"seconds": 1.5})
    assert plan.read_bytes() == b"\x01" * 1000 and sidecar["plan"]["size_bytes"] == 1000
    assert C.read_sidecar(plan)["key"] == KEY and C.verify_plan_sha256(plan)
    assert C.check_plan(plan, KEY) == C.CacheStatus(True, ())
    with pytest.raises(Exception, match="safe file-name"):
        dataclasses.replace(KEY, model="../evil")


@pytest.mark.parametrize("change, reason", [
    ({"tensorrt": "8.6.2.3"}, "TensorRT 10.3.0.30 != 8.6.2.3"),
    ({"gpu_name": "NVIDIA GeForce RTX 4090"}, "GPU Orin != NVIDIA GeForce RTX 4090"),
    ({"compute_capability": "8.9"}, "compute capability 8.7 != 8.9"),
    ({"l4t": None}, "L4T 36.4.0 != none"),
    ({"onnx_sha256": "c" * 64}, "ONNX sha256 changed (aaaaaaaaaaaa -> cccccccccccc): the bundle was re-exported"),
    ({"recipe_sha256": "d" * 64}, "precision/quantization recipe changed"),
    ({"profile_max": (16, 3, 224, 224)}, "batch profile min/opt/max (1, 1, 8) != (1, 1, 16)"),
    ({"build_mode": "strongly-typed"}, "build mode fp16-flag != strongly-typed"),
])
def test_each_key_field_makes_a_plan_stale_with_a_reason(tmp_path, change, reason):
    plan = tmp_path / KEY.plan_name()
    C.publish_plan(plan, b"plan", KEY, {})
    status = C.check_plan(plan, dataclasses.replace(KEY, **change))
    assert not status.valid and len(status.reasons) == 1 and status.reasons[0].startswith(reason)


def test_file_level_staleness(tmp_path):
    plan = tmp_path / KEY.plan_name()
    assert C.check_plan(plan, KEY).reasons[0].startswith("no plan at")
    plan.write_bytes(b"plan")  # as if a build died between os.replace(plan) and the sidecar write
    assert "no sidecar" in C.check_plan(plan, KEY).reasons[0]
    C.publish_plan(plan, b"plan", KEY, {})
    plan.write_bytes(b"pla")  # truncated or replaced behind the sidecar's back
    assert "3 bytes, sidecar says 4" in C.check_plan(plan, KEY).reasons[0]
    C.sidecar_path(plan).write_text(json.dumps({"schema": 99}))
    assert "sidecar schema 99 != 1" in C.check_plan(plan, KEY).reasons[0]
    C.sidecar_path(plan).write_text("{broken")
    assert "unreadable sidecar" in C.check_plan(plan, KEY).reasons[0]


def test_read_l4t_release(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13\n")
    assert C.read_l4t_release(release) == "36.4.0"
    assert C.read_l4t_release(tmp_path / "missing") is None


def _rebuild_reasons(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.getMessage().startswith("building "))


def test_stale_engine_is_rebuilt_for_each_key_field(monkeypatch, tiny_bundle, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edgebind.engines.trt_build")
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("*text*", "*audio*"))
    root = _engines(tmp_path)
    stack = install(monkeypatch, "10")
    manifest = load_manifest(bundle)
    plan, key, built = ensure_engine(bundle, manifest, "vision", "fp16", engines_root=root)
    assert built

    # L4T release changed (same file name: the plan is replaced in place)
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    monkeypatch.setattr(C, "L4T_RELEASE_FILE", str(release))
    caplog.clear()
    plan2, key2, built = ensure_engine(bundle, manifest, "vision", "fp16", engines_root=root)
    assert built and plan2 == plan and key2.l4t == "36.4.0" and "L4T none != 36.4.0" in _rebuild_reasons(caplog)

    # batch profile changed
    caplog.clear()
    config = TrtBuildConfig(batch_profile=(1, 2, 16))
    _, _, built = ensure_engine(bundle, manifest, "vision", "fp16", engines_root=root, config=config)
    assert built and "batch profile min/opt/max (1, 1, 8) != (1, 2, 16)" in _rebuild_reasons(caplog)
    assert ensure_engine(bundle, manifest, "vision", "fp16", engines_root=root, config=config)[2] is False

    # ONNX re-exported (new sha256 in the manifest)
    import onnx

    fp32 = manifest.tower("vision").artifact("fp32", "fp32")
    model = onnx.load(bundle / fp32.file)
    model.doc_string = "re-exported"
    onnx.save(model, bundle / fp32.file)
    art = dataclasses.replace(fp32, sha256=_io.sha256_file(bundle / fp32.file), size_bytes=(bundle / fp32.file).stat().st_size)
    manifest = manifest.with_tower("vision", manifest.tower("vision").with_artifact(art))
    save_manifest(manifest, bundle)
    caplog.clear()
    _, _, built = ensure_engine(bundle, manifest, "vision", "fp16", engines_root=root, config=config)
    assert built and "ONNX sha256 changed" in _rebuild_reasons(caplog)

    # quantization recipe changed (re-quantized with other settings)
    ensure_engine(bundle, manifest, "vision", "int8", engines_root=root, config=config)
    qdq = manifest.tower("vision").artifact("int8", "int8-qdq")
    requant = dataclasses.replace(qdq, provenance={**qdq.provenance, "recipe": {"int8": {"method": "percentile"}}})
    manifest = manifest.with_tower("vision", manifest.tower("vision").with_artifact(requant))
    caplog.clear()
    _, _, built = ensure_engine(bundle, manifest, "vision", "int8", engines_root=root, config=config)
    assert built and "precision/quantization recipe changed" in _rebuild_reasons(caplog)

    # with build=False a stale plan is reported, not rebuilt
    with pytest.raises(EngineError, match=r"no usable TensorRT engine .*batch profile"):
        ensure_engine(bundle, manifest, "vision", "fp16", engines_root=root, build=False)
    assert not stack.named("Runtime.deserialize_cuda_engine")  # staleness never needed deserialising


def test_foreign_engine_is_detected_before_deserialising(monkeypatch, tiny_bundle, tmp_path):
    root = _engines(tmp_path)
    install(monkeypatch, "8.6", gpu=FakeGpu(name="NVIDIA GeForce RTX 4090", cc=(8, 9), total=24 << 30, free=20 << 30))
    foreign, _, _ = ensure_engine(tiny_bundle, None, "imu", "fp32", engines_root=root)
    stack = install(monkeypatch, "10")
    manifest = load_manifest(tiny_bundle)
    ours = C.engine_cache_dir(root, "imagebind_tiny") / "imagebind_tiny.imu.fp32.orin-sm87-trt10.3.0.plan"
    shutil.copy(foreign, ours)  # e.g. an engines/ folder copied from a desktop to the robot
    shutil.copy(C.sidecar_path(foreign), C.sidecar_path(ours))
    with pytest.raises(EngineError) as info:
        ensure_engine(tiny_bundle, manifest, "imu", "fp32", engines_root=root, build=False)
    for reason in ("TensorRT 8.6.2.3 != 10.3.0.30", "GPU NVIDIA GeForce RTX 4090 != Orin", "compute capability 8.9 != 8.7"):
        assert reason in str(info.value)
    with open_trt_engine(tiny_bundle, manifest, "imu", "fp32", engines_root=root) as eng:
        assert eng.run(np.zeros((1, 6, 2000), np.float32)).shape == (1, 64)
    assert len(stack.named("Runtime.deserialize_cuda_engine")) == 1  # only the rebuilt plan was deserialised
    assert not [c for c in stack.named("log") if "Version tag" in c[2]]
    rows = {Path(r["plan"]).name: r for r in C.list_cached_engines(root, C.EngineEnvironment("10.3.0.30", "Orin", "8.7"))}
    assert rows[foreign.name]["status"] == "stale" and "TensorRT 8.6.2.3 != 10.3.0.30" in rows[foreign.name]["reasons"]
    assert rows[ours.name]["status"] == "valid"


def test_interrupted_builds_leave_nothing_behind(monkeypatch, tiny_bundle, tmp_path):
    root = _engines(tmp_path)
    stack = install(monkeypatch, "10")
    folder = C.engine_cache_dir(root, "imagebind_tiny")

    def interrupted_fsync(fd):
        raise KeyboardInterrupt  # Ctrl-C or power loss after the data was written, before os.replace

    with monkeypatch.context() as m:
        m.setattr(_io.os, "fsync", interrupted_fsync)
        with pytest.raises(KeyboardInterrupt):
            ensure_engine(tiny_bundle, None, "imu", "fp32", engines_root=root, config=TrtBuildConfig(timing_cache=False))
    assert not list(folder.glob("*.plan")) and not list(folder.glob("*.json")) and not list(folder.glob("*.tmp"))

    def failing_build(network, config):
        raise RuntimeError("CUDA error 700 during tactic timing")

    with monkeypatch.context() as m:
        m.setattr(stack.trt.Builder, "build_serialized_network", lambda self, n, c: failing_build(n, c))
        with pytest.raises(RuntimeError):
            ensure_engine(tiny_bundle, None, "imu", "fp32", engines_root=root)
    assert not list(folder.glob("*.plan")) and not list(folder.glob("*.json")) and not (folder / "timing.cache").exists()

    # a build that returns None (TensorRT's way to fail) is an EngineError with TensorRT's messages
    with monkeypatch.context() as m:
        m.setattr(stack.trt.Builder, "build_serialized_network", lambda self, n, c: None)
        with pytest.raises(EngineError, match="failed to build .*workspace"):
            ensure_engine(tiny_bundle, None, "imu", "fp32", engines_root=root)

    # a killed process can leave temp files and a plan without sidecar: both are cleaned / rebuilt
    plan = folder / "imagebind_tiny.imu.fp32.orin-sm87-trt10.3.0.plan"
    plan.write_bytes(b"half a plan")
    (folder / f".{plan.name}.abc123.tmp").write_bytes(b"junk")
    _, _, built = ensure_engine(tiny_bundle, None, "imu", "fp32", engines_root=root)
    assert built and C.check_plan(plan, C.read_sidecar(plan)["key"]).valid
    assert not list(folder.glob("*.tmp"))


def test_corrupt_plan_with_valid_sidecar_is_rebuilt(monkeypatch, tiny_bundle, tmp_path):
    root = _engines(tmp_path)
    stack = install(monkeypatch, "10")
    x = np.random.default_rng(0).standard_normal((2, 6, 2000)).astype(np.float32)
    with open_trt_engine(tiny_bundle, None, "imu", "fp16", engines_root=root) as eng:
        expected = eng.run(x)
        plan = eng.plan_path
        assert eng.cache["status"] == "created"
    plan.write_bytes(bytes(reversed(plan.read_bytes())))  # same size: the sidecar still looks valid
    assert C.check_plan(plan, C.read_sidecar(plan)["key"]).valid
    with pytest.raises(EngineError, match="cannot deserialise"):
        open_trt_engine(tiny_bundle, None, "imu", "fp16", engines_root=root, build=False)
    assert plan.exists()  # build=False reports, it does not delete
    stack.calls.clear()
    with open_trt_engine(tiny_bundle, None, "imu", "fp16", engines_root=root) as eng:
        np.testing.assert_allclose(eng.run(x), expected, rtol=1e-6)
        assert eng.cache["status"].startswith("rebuilt: corrupt plan") and "built now" in eng.reason
    with open_trt_engine(tiny_bundle, None, "imu", "fp16", engines_root=root) as eng:
        assert eng.cache == {"status": "hit", "folder": str(plan.parent), "plan": plan.name}
    assert len(stack.named("Runtime.deserialize_cuda_engine")) == 3 and len(stack.named("Builder.build_serialized_network")) == 1


def test_timing_cache_merges_what_another_build_saved_meanwhile(monkeypatch, tiny_bundle, tmp_path):
    install(monkeypatch, "10")
    other_root, root = tmp_path / "other", _engines(tmp_path)
    ensure_engine(tiny_bundle, None, "imu", "fp32", engines_root=other_root)
    other_blob = (other_root / "imagebind_tiny" / "timing.cache").read_bytes()
    original = C.save_timing_cache

    def concurrent_writer(trt_config, path, read_blob):
        path.write_bytes(other_blob)  # another process finished its build between our load and our save
        return original(trt_config, path, read_blob)

    monkeypatch.setattr(C, "save_timing_cache", concurrent_writer)
    plan, _, _ = ensure_engine(tiny_bundle, None, "vision", "fp32", engines_root=root)
    assert C.read_sidecar(plan)["build"]["timing_cache"]["merged"] is True

    def entries(blob: bytes) -> dict:
        return json.loads(blob.split(b"\n", 1)[1])["entries"]

    merged = entries((root / "imagebind_tiny" / "timing.cache").read_bytes())
    assert set(entries(other_blob)) <= set(merged) and len(merged) > len(entries(other_blob))


def test_file_lock_excludes_other_processes(tmp_path):
    lock = tmp_path / "timing.cache.lock"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+b')\n"
             "try:\n    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(1)\n")
    with C.file_lock(lock):
        assert subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=30).returncode == 1
    assert subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=30).returncode == 0


def test_list_cached_engines(monkeypatch, tiny_bundle, tmp_path):
    root = _engines(tmp_path)
    install(monkeypatch, "10")
    plan, key, _ = ensure_engine(tiny_bundle, None, "imu", "fp32", engines_root=root)
    broken = plan.with_name("imagebind_tiny.depth.fp32.orin-sm87-trt10.3.0.plan")
    broken.write_bytes(b"interrupted")
    orphan = plan.with_name("imagebind_tiny.thermal.fp32.orin-sm87-trt10.3.0.json")
    orphan.write_text("{}")
    here = C.EngineEnvironment("10.3.0.30", "Orin", "8.7")
    rows = {Path(r["plan"]).name: r for r in C.list_cached_engines(root, here, bundle_dir=tiny_bundle)}
    assert rows[plan.name]["status"] == "valid" and rows[plan.name]["form"] == "fp32" and rows[plan.name]["valid"] is True
    assert rows[broken.name]["status"] == "stale" and "no sidecar" in rows[broken.name]["reasons"][0]
    assert rows[orphan.with_suffix(".plan").name]["reasons"] == ["plan missing (only its sidecar is left)"]
    unknown = {Path(r["plan"]).name: r for r in C.list_cached_engines(root)}[plan.name]
    assert unknown["status"] == "unknown" and unknown["valid"] is None
    moved = C.list_cached_engines(root, dataclasses.replace(here, l4t="36.4.0"))
    assert {Path(r["plan"]).name: r for r in moved}[plan.name]["reasons"] == ["L4T none != 36.4.0"]
    assert C.list_cached_engines(tmp_path / "nothing-here") == []
    sidecar = json.loads(C.sidecar_path(plan).read_text())
    sidecar["key"]["onnx_sha256"] = "0" * 64
    C.sidecar_path(plan).write_text(json.dumps(sidecar))
    row = {Path(r["plan"]).name: r for r in C.list_cached_engines(root, here, bundle_dir=tiny_bundle)}[plan.name]
    assert row["status"] == "stale" and row["reasons"][0].startswith("ONNX sha256 changed (000000000000 -> ")
    assert os.path.exists(plan)
