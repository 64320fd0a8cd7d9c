"""Benchmarks (issue 6): smoke runs of every script in benchmarks/ and of ``edgebind bench`` on the tiny
bundle with a few iterations, checking the outputs' schema and that the numbers are finite and positive;
plus unit tests of the timing loop, the FLOP counter (against the analytic count) and the target check.
No timing assertions: speed is for the benchmarks themselves."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from edgebind.bench.flops import check_against_reference, count_flops
from edgebind.bench.targets import check_targets
from edgebind.bench.timing import StopPolicy, interleave, summarize
from edgebind.errors import ConfigError, EngineError

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
PERCENTILES = ("p50_ms", "p90_ms", "p99_ms")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    return proc


def _strict_json(path: Path) -> dict:
    def reject(token: str):
        raise AssertionError(f"{path.name} holds {token}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=reject)


# -- unit tests ----------------------------------------------------------------------------------------
def test_interleave_round_robin_stops_and_records_errors():
    calls: list[str] = []

    def fast():
        calls.append("fast")
        return 0.002  # timed itself: 2 ms

    def broken():
        calls.append("broken")
        if calls.count("broken") > 2:
            raise RuntimeError("device lost")

    policy = StopPolicy(warmup=1, min_iterations=5, min_seconds=0.0, max_seconds=5.0, require_stable=False)
    out = interleave({"fast": fast, "broken": broken}, policy)
    assert out["fast"]["times_ms"] == pytest.approx([2.0] * 5) and out["fast"]["stop"] == "min_iterations reached"
    assert "device lost" in out["broken"]["error"] and len(out["broken"]["times_ms"]) == 1
    # one warm-up each, then round-robin with the starting position rotating every round
    assert calls[:6] == ["fast", "broken", "fast", "broken", "broken", "fast"] and calls.count("fast") == 6
    stats = summarize([1.0, 2.0, 3.0, 4.0])
    assert stats["p50_ms"] == 2.5 and stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    with pytest.raises(ConfigError):
        StopPolicy(min_iterations=0)


def test_interleave_caps_at_max_seconds():
    policy = StopPolicy(warmup=0, min_iterations=10**6, min_seconds=0.0, max_seconds=0.05, min_after_cap=3)
    out = interleave({"slow": lambda: 0.02}, policy)
    assert len(out["slow"]["times_ms"]) == 3 and out["slow"]["stop"].startswith("max_seconds")
    assert out["slow"]["stable"] is False


def test_flops_match_the_analytic_count(tiny_bundle):
    from edgebind.bundle.manifest import load_manifest

    manifest = load_manifest(tiny_bundle)
    cfg = manifest.model_config
    d, blocks, out_dim = cfg["depth_embed_dim"], cfg["depth_num_blocks"], cfg["out_embed_dim"]
    patches = (cfg["image_size"] // cfg["depth_patch_size"]) ** 2
    tokens = patches + 1  # + CLS; keys get one more position (bias_kv)
    linear = blocks * 2 * tokens * 12 * d * d + 2 * d * out_dim  # qkv 3D^2 + out D^2 + MLP 8D^2, head
    conv = 2 * patches * d * cfg["depth_patch_size"] ** 2
    attention = blocks * 2 * (2 * tokens * (tokens + 1) * d)
    fp32 = count_flops(tiny_bundle / manifest.artifact("depth", "fp32").file)
    assert fp32["unresolved"] == []
    assert fp32["by_kind"] == {"attention": attention / 1e9, "conv": conv / 1e9, "linear": linear / 1e9}
    assert fp32["reference_gflops"] == pytest.approx((linear + conv) / 1e9)
    assert fp32["int8_fraction"] == 0.0
    batch4 = count_flops(tiny_bundle / manifest.artifact("depth", "fp32").file, batch=4)
    assert batch4["total_gflops"] == pytest.approx(4 * fp32["total_gflops"])
    dyn = count_flops(tiny_bundle / manifest.artifact("depth", "int8", "int8-dynamic").file)
    assert dyn["by_precision"]["int8"] == pytest.approx(linear / 1e9)  # all weight matmuls, not conv/attention
    assert [n["op"] for n in dyn["float_linear_nodes"]] == ["Conv"]


def test_reference_check_flags_a_miss():
    checked = check_against_reference({"depth": 8.41, "vision": 300.0}, tolerance=0.03)
    assert checked["depth"]["ok"] is True and checked["vision"]["ok"] is False
    assert checked["vision"]["rel_error"] == pytest.approx(-24 / 324, abs=1e-4)


def test_targets_pass_and_fail_with_reasons():
    def row(backend, p50, **kw):
        return {"tower": "audio", "batch": 1, "backend": backend, "status": "ok", "p50_ms": p50,
                "form": backend.split("-", 2)[-1], **kw}

    fid = {"mean_cosine": 0.995, "min_mean_cosine": 0.99}
    result = {"model": "imagebind_huge", "towers": {"audio": {"flops": {}}}, "results": [
        row("torch-eager-fp32", 200.0), row("ort-cpu-fp32", 90.0),
        row("ort-cpu-int8-dynamic", 30.0, speedup_vs_ort_fp32=3.0, speedup_vs_torch=6.7, fidelity=fid,
            fraction_of_peak=0.7),
        row("ort-cpu-int8-qdq", 40.0, speedup_vs_ort_fp32=2.25, speedup_vs_torch=5.0, fidelity=fid)]}
    (entry,) = check_targets(result)
    assert entry["backend"] == "ort-cpu-int8-dynamic" and entry["status"] == "pass" and entry["why"] is None
    result["results"][2]["fraction_of_peak"] = 0.4  # audio is a large tower: 60 % of the INT8 rate applies
    (entry,) = check_targets(result)
    assert entry["status"] == "fail" and entry["checks"]["fraction_of_int8_peak"]["ok"] is False
    assert entry["why"] is not None


def test_worker_reports_why_it_cannot_open(tmp_path):
    from edgebind.bench.worker import Worker

    with pytest.raises(EngineError, match=r"depth/ort-cpu-fp32/b1: ManifestError: .*no manifest here"):
        Worker({"bundle": str(tmp_path), "backend": "ort-cpu-fp32", "modality": "depth", "batch": 1, "threads": 1})


# -- smoke runs of the scripts and the CLI ------------------------------------------------------------------
def test_latency_script_smoke(tiny_bundle, tmp_path):
    out = tmp_path / "tiny"
    _script("latency.py", str(tiny_bundle), "--modalities", "depth", "--backends",
            "torch-eager-fp32,ort-cpu-fp32,ort-cpu-int8-dynamic,tensorrt-int8", "--batch", "1", "2", "--quick",
            "--peak", "quick", "--profile", "--out", str(out), "--raw", str(tmp_path / "raw"))
    result = _strict_json(out / "latency.json")
    assert result["model"] == "imagebind_tiny" and result["environment"]["cpu"]["logical_cpus"] >= 1
    libraries = result["environment"]["libraries"]
    assert "avx512_vnni" in result["environment"]["cpu"]["flags"]
    assert libraries["onnxruntime"] or libraries["onnxruntime-gpu"]
    assert set(result["rates"]) == {"fp32", "int8"} and all(_positive(v) for v in result["rates"].values())
    ok = [r for r in result["results"] if r["status"] == "ok"]
    assert {(r["backend"], r["batch"]) for r in ok} == {
        (b, n) for b in ("torch-eager-fp32", "ort-cpu-fp32", "ort-cpu-int8-dynamic") for n in (1, 2)}
    for r in ok:
        assert all(_positive(r[k]) for k in (*PERCENTILES, "throughput_per_s", "size_bytes", "gflops_per_sample",
                                              "achieved_gops", "fraction_of_peak", "speedup_vs_torch")), r
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["iterations"] >= 2
        assert _positive(r["memory"]["peak_mib"]) and r["memory"]["peak_mib"] >= r["memory"]["baseline_mib"]
        assert "raw_times_ms" not in r
    unavailable = [r for r in result["results"] if r["backend"] == "tensorrt-int8"]
    assert len(unavailable) == 2 and all(r["status"] == "unavailable" and r["reason"] for r in unavailable)
    profile = result["towers"]["depth"]["profiles"]["int8-dynamic"]
    assert _positive(profile["kernel_ms_per_run"]) and "int8_gemm" in profile["by_category_ms"]
    assert result["targets"][0]["tower"] == "depth" and result["targets"][0]["status"] in ("pass", "fail")
    raw = _strict_json(tmp_path / "raw" / "latency_times.json")
    assert any(key.startswith("depth/ort-cpu-fp32/b2") for key in raw)
    text = (out / "latency.md").read_text()
    assert "| depth | 2 | ort-cpu-int8-dynamic |" in text and "### Targets" in text and "tensorrt-int8" in text
    for png in ("latency.png", "fraction_of_peak.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 1000 < len(data) < 200_000


def test_bench_cli_json(tiny_bundle, capsys):
    from edgebind.cli.main import main

    rc = main(["bench", str(tiny_bundle), "--modalities", "imu", "--backends", "ort-cpu-fp32", "--batch", "1",
               "--quick", "--no-flops", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = [r for r in result["results"] if r["status"] == "ok"]
    assert row["tower"] == "imu" and all(_positive(row[k]) for k in PERCENTILES)
    assert row["fraction_of_peak"] is None and row["gflops_per_sample"] is None  # no rates, no FLOPs asked


def test_peak_and_flops_scripts_smoke(tiny_bundle, tmp_path):
    _script("peak.py", "--quick", "--out", str(tmp_path))
    peak = _strict_json(tmp_path / "peak.json")
    assert all(_positive(peak["attainable"][k]) for k in ("fp32", "int8")) and _positive(peak["int8_over_fp32"])
    assert all(_positive(r["rate_gops"]) and _positive(r["p50_ms"]) for r in peak["shapes"])
    assert "Attainable" in (tmp_path / "peak.md").read_text()
    _script("flops.py", str(tiny_bundle), "--out", str(tmp_path))
    flops = _strict_json(tmp_path / "flops.json")
    assert set(flops["towers"]) == {"vision", "text", "audio", "depth", "thermal", "imu"}
    for forms in flops["towers"].values():
        assert set(forms) == {"fp32", "fp16", "int8-qdq", "int8-dynamic"}
        assert all(_positive(f["total_gflops"]) and not f["unresolved"] for f in forms.values())
        assert forms["int8-dynamic"]["int8_fraction"] > 0 and forms["fp32"]["int8_fraction"] == 0
    assert flops["check"] == {}  # the imagebind.md check applies to imagebind_huge only


def test_fidelity_script_smoke(tiny_bundle, tiny_calibration, tmp_path):
    _script("fidelity.py", str(tiny_bundle), "--no-minilm", "--out", str(tmp_path))
    result = _strict_json(tmp_path / "fidelity.json")
    assert len(result["rows"]) == 6 * 3 and result["minilm"] == {"skipped": "--no-minilm"}
    for r in result["rows"]:
        assert r["source"] == "manifest" and 0.99 <= r["mean_cosine"] <= 1.0 + 1e-9 and r["meets_threshold"] is True
    assert "| imagebind_tiny | imu | int8-qdq |" in (tmp_path / "fidelity.md").read_text()
    from edgebind.bench.fidelity import fidelity_table

    again = fidelity_table([tiny_bundle], recompute=True, calibration=tiny_calibration, modalities=["depth"])
    recorded = {r["form"]: r["mean_cosine"] for r in result["rows"] if r["tower"] == "depth"}
    assert {r["form"] for r in again["rows"]} == set(recorded)
    for r in again["rows"]:
        assert r["source"] == "recomputed" and r["mean_cosine"] == pytest.approx(recorded[r["form"]], abs=1e-3)


def test_stream_script_smoke(tiny_bundle, tmp_path):
    pytest.importorskip("cv2", reason="OpenCV (sensors extra) encodes the demo recording's video")
    _script("stream.py", str(tiny_bundle), "--seconds", "2", "--threads", "1", "--out", str(tmp_path),
            "--workdir", str(tmp_path / "recordings"))
    assert (tmp_path / "recordings" / "demo_2s" / "recording.json").is_file()
    result = _strict_json(tmp_path / "stream.json")
    assert result["mode"] == "live" and result["results"] > 0 and _positive(result["wall_s"])
    assert _positive(result["cpu"]["seconds"]) and _positive(result["cpu"]["cores_used"])
    rows = {r["modality"]: r for r in result["modalities"]}
    assert set(rows) == {"vision", "depth", "thermal", "audio", "imu"}
    embedded = [r for r in rows.values() if r["windows"] > 0]
    assert len(embedded) >= 3  # 2 s is short for the sliding audio / IMU windows
    for r in embedded:
        assert all(_positive(r[k]) for k in ("latency_p50_ms", "latency_p99_ms", "engine_mean_ms")), r
        assert 0.0 <= r["overhead_fraction"] <= 1.0 and r["dropped"] >= 0
    assert result["overhead"]["target"] == 0.05 and "overhead" in (tmp_path / "stream.md").read_text().lower()


def test_stream_script_replays_only_the_named_modalities(tiny_bundle, tmp_path):
    pytest.importorskip("cv2", reason="OpenCV (sensors extra) encodes the demo recording's video")
    _script("stream.py", str(tiny_bundle), "--seconds", "2", "--threads", "1", "--out", str(tmp_path),
            "--workdir", str(tmp_path / "recordings"), "--modalities", "depth,thermal", "--name", "subset")
    result = _strict_json(tmp_path / "subset.json")
    assert result["config"]["modalities"] == ["depth", "thermal"]
    assert {r["modality"] for r in result["modalities"]} == {"depth", "thermal"}
    assert all(r["windows"] > 0 for r in result["modalities"])
