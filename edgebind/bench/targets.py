"""The issue-6 performance targets, checked against a latency result, with the reason when one is missed.

Targets (2-core AVX-512 VNNI CPU, batch 1, imagebind_huge geometry), for every tower:

- ORT INT8 (the faster of ``int8-dynamic`` / ``int8-qdq`` on the CPU EP) >= 2.5x faster than ORT FP32
  and >= 5x faster than PyTorch eager FP32, while the artifact meets its fidelity threshold;
- the large towers (>= 30 reference GFLOPs: vision, text, audio, thermal) reach >= 60% of the
  machine's attainable INT8 matmul rate.

For a miss, ``explain`` gathers the figures that say why: the share of counted FLOPs that stayed
float (attention matmuls, layers returned to float by the fallback, Conv stems) and, when the
result has ORT profiles, how the kernel time splits between INT8 GEMMs, float GEMMs, quantize ops
and everything else.
"""

from __future__ import annotations

from typing import Any

from .flops import REFERENCE_GFLOPS_HUGE

MIN_SPEEDUP_VS_ORT_FP32 = 2.5
MIN_SPEEDUP_VS_TORCH = 5.0
MIN_FRACTION_OF_INT8_PEAK = 0.6
LARGE_TOWER_GFLOPS = 30.0
INT8_BACKENDS = ("ort-cpu-int8-dynamic", "ort-cpu-int8-qdq")


def _best_int8(rows: list[dict[str, Any]], tower: str, batch: int) -> dict[str, Any] | None:
    candidates = [r for r in rows if r["tower"] == tower and r["batch"] == batch and r["backend"] in INT8_BACKENDS
                  and r.get("status") == "ok"]
    return min(candidates, key=lambda r: r["p50_ms"]) if candidates else None


def explain(result: dict[str, Any], tower: str, form: str) -> dict[str, Any]:
    """Figures behind an INT8 tower's speed: float FLOPs left in the graph, and the profile split if any."""
    info = result.get("towers", {}).get(tower, {})
    flops = info.get("flops", {}).get(form, {})
    out: dict[str, Any] = {}
    total = flops.get("total_gflops")
    if total:
        by_kind = flops.get("by_kind", {})
        out["int8_flop_share"] = round(flops.get("int8_fraction", 0.0), 4)
        out["attention_flop_share"] = round(by_kind.get("attention", 0.0) / total, 4)
        float_linear = flops.get("float_linear_nodes", [])
        out["float_linear_nodes"] = len(float_linear)
        out["float_linear_gflops"] = round(sum(n["gflops"] for n in float_linear), 4)
    profile = info.get("profiles", {}).get(form)
    if profile:
        out["kernel_time_share"] = profile.get("by_category_share")
        out["kernel_ms_per_run"] = round(profile.get("kernel_ms_per_run", 0.0), 3)
        out["top_ops_ms"] = dict(list(profile.get("by_op_ms", {}).items())[:5])
        out["nodes_kept_float"] = len(profile.get("nodes_kept_float", []))
    return out


def check_targets(result: dict[str, Any], batch: int = 1) -> list[dict[str, Any]]:
    """One entry per tower: the INT8 configuration compared, each target's figure and pass flag, and ``why``."""
    rows = result.get("results", [])
    reference = REFERENCE_GFLOPS_HUGE if result.get("model") == "imagebind_huge" else None
    out = []
    for tower in result.get("towers", {}):
        best = _best_int8(rows, tower, batch)
        entry: dict[str, Any] = {"tower": tower, "batch": batch, "backend": None if best is None else best["backend"]}
        if best is None:
            entry["status"] = "not measured (no ORT INT8 result)"
            out.append(entry)
            continue
        checks: dict[str, Any] = {}
        vs_ort, vs_torch = best.get("speedup_vs_ort_fp32"), best.get("speedup_vs_torch")
        checks["speedup_vs_ort_fp32"] = {"value": vs_ort, "target": MIN_SPEEDUP_VS_ORT_FP32,
                                         "ok": None if vs_ort is None else vs_ort >= MIN_SPEEDUP_VS_ORT_FP32}
        checks["speedup_vs_torch"] = {"value": vs_torch, "target": MIN_SPEEDUP_VS_TORCH,
                                      "ok": None if vs_torch is None else vs_torch >= MIN_SPEEDUP_VS_TORCH}
        fid = best.get("fidelity") or {}
        threshold = fid.get("min_mean_cosine")
        cos = fid.get("mean_cosine")
        checks["fidelity"] = {"value": cos, "target": threshold,
                              "ok": None if cos is None or threshold is None else cos >= threshold}
        large = (reference or {}).get(tower, best.get("gflops_per_sample") or 0.0) >= LARGE_TOWER_GFLOPS
        if large:
            frac = best.get("fraction_of_peak")
            checks["fraction_of_int8_peak"] = {"value": frac, "target": MIN_FRACTION_OF_INT8_PEAK,
                                               "ok": None if frac is None else frac >= MIN_FRACTION_OF_INT8_PEAK}
        entry["checks"] = checks
        oks = [c["ok"] for c in checks.values()]
        entry["status"] = "pass" if all(ok is True for ok in oks) else ("fail" if any(ok is False for ok in oks)
                                                                         else "incomplete")
        entry["p50_ms"] = best["p50_ms"]
        entry["why"] = explain(result, tower, best["form"]) if entry["status"] != "pass" else None
        out.append(entry)
    return out
