"""`edgebind verify`, `edgebind info` and `edgebind build` on the tiny bundle; environment probes on fake files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgebind.bundle.manifest import load_manifest
from edgebind.calibration import CalibrationSet
from edgebind.cli.main import main
from edgebind.engines import describe, list_caches, open_engine, verify_bundle
from edgebind.engines.environment import (
    _gpu_from_tegra,
    cpu_features,
    device_fingerprint,
    l4t_release,
    memory_facts,
)
from edgebind.engines.select import Availability
from edgebind.errors import CalibrationError, ConfigError

ALL = ("vision", "text", "audio", "depth", "thermal", "imu")
CPU_ONLY = Availability(tensorrt=False, tensorrt_reason="module 'tensorrt' not importable", gpu=False,
                        gpu_reason="no GPU", ort_providers=("CPUExecutionProvider",))


def test_verify_passes_on_the_tiny_bundle(tiny_bundle, tiny_calibration, tmp_path):
    report = verify_bundle(tiny_bundle, calibration=tiny_calibration, engines_root=tmp_path, availability=CPU_ONLY)
    assert report.passed and not report.failed
    # On a CPU-only device: the CPU EP's INT8 form for each tower (fp32 on the CPU EP is the reference).
    assert [(r.tower, r.backend, r.form) for r in report.rows] == [(m, "onnxruntime-cpu", "int8-dynamic") for m in ALL]
    calib_val = {m: len(CalibrationSet.open(tiny_calibration).val(m)) for m in ALL}
    for row in report.rows:
        assert row.n == calib_val[row.tower] and row.threshold == 0.99
        assert 0.99 <= row.mean_cosine <= 1.0 and row.min_cosine <= row.mean_cosine and row.max_abs_diff > 0
        assert "int8-dynamic requested" in row.reason
    assert report.data["imu"] == f"{calib_val['imu']} validation rows of {tiny_calibration}"
    assert report.backends["tensorrt"].startswith("not available")
    d = report.to_dict()
    assert d["passed"] is True and d["failed"] == [] and json.loads(json.dumps(d)) == d


def test_verify_all_forms_and_precision_filter(tiny_bundle, tiny_calibration, tmp_path):
    report = verify_bundle(tiny_bundle, calibration=tiny_calibration, engines_root=tmp_path, availability=CPU_ONLY,
                           all_forms=True, precisions=["int8"], modalities=["text", "depth"])
    assert [(r.tower, r.form) for r in report.rows] == [
        ("text", "int8-qdq"), ("text", "int8-dynamic"), ("depth", "int8-qdq"), ("depth", "int8-dynamic")]
    assert report.passed


def test_verify_cli_exit_codes_and_json(tiny_bundle, tiny_calibration, tmp_path, capsys):
    base = ["verify", str(tiny_bundle), "--calibration", str(tiny_calibration), "--engines", str(tmp_path / "eng")]
    assert main([*base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert main([*base, "--modalities", "vision,imu"]) == 0
    table = capsys.readouterr().out
    assert "vision   onnxruntime-cpu       int8-dynamic" in table and "all rows pass" in table
    assert main([*base, "--threshold", "int8=1.5", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False
    assert out["failed"] == [f"{m}/onnxruntime-cpu/int8-dynamic" for m in ALL]
    assert all(r["threshold"] == 1.5 and r["error"] is None for r in out["rows"])
    with pytest.raises(SystemExit):  # argparse rejects a threshold without a value
        main([*base, "--threshold", "int8"])


def test_verify_without_calibration_uses_synthetic_inputs(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no calibration/default here
    report = verify_bundle(tiny_bundle, engines_root=None, availability=CPU_ONLY, modalities=["text", "imu"])
    assert report.data == {m: "8 synthetic samples (seed 0): no calibration set" for m in ("text", "imu")}
    assert report.passed and [r.n for r in report.rows] == [8, 8]


def test_verify_reports_unavailable_backends_and_bad_arguments(tiny_bundle, tiny_calibration, tmp_path):
    report = verify_bundle(tiny_bundle, calibration=tiny_calibration, engines_root=tmp_path, availability=CPU_ONLY,
                           backends=["tensorrt"], modalities=["depth"])
    assert not report.passed
    [row] = report.rows
    assert (row.backend, row.error) == ("tensorrt", "not available: module 'tensorrt' not importable")
    with pytest.raises(ConfigError, match="unknown precision"):
        verify_bundle(tiny_bundle, thresholds={"int4": 0.9}, availability=CPU_ONLY)
    with pytest.raises(ConfigError, match="unknown backend"):
        verify_bundle(tiny_bundle, backends=["cuda"], availability=CPU_ONLY)
    with pytest.raises(CalibrationError):
        verify_bundle(tiny_bundle, calibration=tmp_path / "nope", availability=CPU_ONLY)


def test_verify_flags_a_broken_artifact(tiny_bundle, tiny_calibration, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    art = load_manifest(bundle).artifact("audio", "int8", "int8-dynamic")
    (bundle / art.file).write_bytes(b"\0" * art.size_bytes)  # same size, wrong content
    report = verify_bundle(bundle, calibration=tiny_calibration, engines_root=None, availability=CPU_ONLY,
                           modalities=["audio", "depth"])
    assert [r.passed for r in report.rows] == [False, True]
    assert report.rows[0].error.startswith("ManifestError:") and "does not match" in report.rows[0].error


def test_info_json_keys_and_cache_listing(tiny_bundle, tmp_path, capsys):
    engines = tmp_path / "engines"
    with open_engine(tiny_bundle, "text", engines_root=engines, availability=CPU_ONLY) as e:
        folder = Path(e.cache["folder"])
    with open_engine(tiny_bundle, "imu", engines_root=engines, availability=CPU_ONLY) as e:
        stale_folder = Path(e.cache["folder"])
    sidecar = stale_folder / "ort_cache.json"
    record = json.loads(sidecar.read_text())
    record["cpu"] = "riscv64:"
    sidecar.write_text(json.dumps(record))
    (engines / "imagebind_tiny" / "ort" / "depth.fp32.0123456789abcdef.cpu.all").mkdir()  # interrupted build
    assert main(["info", "--engines", str(engines), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    for key in ("edgebind", "python", "platform", "onnxruntime", "tensorrt", "cuda_python", "gpu", "l4t", "memory",
                "device_fingerprint", "caches"):
        assert key in facts
    assert "CPUExecutionProvider" in facts["onnxruntime"]["providers"] and facts["onnxruntime"]["version"]
    for key in ("tensorrt", "gpu", "l4t"):
        assert facts[key]["available"] is True or facts[key]["reason"]
    assert facts["memory"]["total_mib"] > 0
    rows = {Path(r["folder"]).name: r for r in facts["caches"]["onnxruntime"]}
    assert rows[folder.name]["status"] == "valid" and rows[folder.name]["form"] == "int8-dynamic"
    assert rows[stale_folder.name]["status"] == "stale"
    assert rows[stale_folder.name]["reasons"][0].startswith("cpu was 'riscv64:' when the cache was made")
    assert rows["depth.fp32.0123456789abcdef.cpu.all"]["reasons"] == ["no ort_cache.json (an interrupted build)"]
    assert main(["info", "--engines", str(engines)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime   version=" in text and f"stale   {stale_folder}" in text


def test_cache_listing_notices_a_reexported_bundle(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    engines = tmp_path / "engines"
    with open_engine(bundle, "depth", precision="fp32", engines_root=engines, availability=CPU_ONLY):
        pass
    manifest_path = bundle / "manifest.json"
    data = json.loads(manifest_path.read_text())
    fp32 = next(a for a in data["towers"]["depth"]["artifacts"] if a["form"] == "fp32")
    fp32["sha256"] = "f" * 64
    manifest_path.write_text(json.dumps(data))
    [row] = list_caches(engines, fingerprint=device_fingerprint())["onnxruntime"]
    assert row["status"] == "stale" and row["reasons"] == [f"{bundle.resolve()} was re-exported: "
                                                          f"{fp32['file']} is now ffffffffffffffff"]
    assert describe(tmp_path / "missing")["caches"] == {"root": str(tmp_path / "missing"), "exists": False,
                                                        "tensorrt": [], "onnxruntime": []}


def test_build_cli(tiny_bundle, tmp_path, capsys):
    engines = tmp_path / "engines"
    assert main(["build", str(tiny_bundle), "--engines", str(engines), "--modalities", "text,audio", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and [r["tower"] for r in out["rows"]] == ["text", "audio"]
    assert all(Path(r["cache"]["folder"], "optimized.onnx").is_file() for r in out["rows"])
    if Availability.detect().tensorrt:
        pytest.skip("TensorRT is installed here; the exit-3 path for a missing TensorRT cannot be checked")
    assert main(["build", str(tiny_bundle), "--engines", str(engines), "--backend", "tensorrt"]) == 3
    assert "pip install 'edgebind[tensorrt]'" in capsys.readouterr().err


# -- environment probes on fake system files ------------------------------------------------------
def test_l4t_release_parsing(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan 8\n")
    assert l4t_release(f) == {"available": True, "release": "36.4.3", "board": "generic"}
    f.write_text("garbage")
    assert l4t_release(f)["available"] is False and "unrecognised" in l4t_release(f)["reason"]
    assert l4t_release(tmp_path / "none") == {"available": False,
                                              "reason": f"{tmp_path / 'none'} not found (not a Jetson / L4T system)"}


def test_memory_and_tegra_chip_parsing(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        7802860 kB\nMemFree:  100 kB\nMemAvailable:    5242880 kB\n"
                       "SwapTotal:       3901424 kB\nSwapFree:        3901424 kB\n")
    assert memory_facts(meminfo) == {"available": True, "total_mib": 7619, "available_mib": 5120,
                                     "swap_total_mib": 3809, "swap_free_mib": 3809}
    chip = tmp_path / "tegra_chip_id"
    chip.write_text("35\n")
    assert _gpu_from_tegra(chip)["compute_capability"] == "8.7"
    chip.write_text("0x19")
    assert "Xavier" in _gpu_from_tegra(chip)["name"]
    assert _gpu_from_tegra(tmp_path / "absent") is None
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx avx2 avx512f avx512_vnni\nprocessor : 1\n")
    assert cpu_features(cpuinfo).endswith(":avx,avx2,avx512f,avx512_vnni")
