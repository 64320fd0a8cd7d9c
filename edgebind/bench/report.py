"""Markdown tables for benchmark results (latency, matmul peak, FLOPs, fidelity, stream) and JSON writing.

Every table starts with a caption naming the machine (``environment.machine_class``) so a pasted
table never loses where it was measured.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .._io import atomic_open, atomic_write_json
from .environment import machine_class


def fmt(value: Any, spec: str = ".2f", scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value * scale, spec)
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table (cells already formatted)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def caption(result: dict[str, Any]) -> str:
    env = result.get("environment") or {}
    load = env.get("load_average")
    load_text = f"; load average at start {load[0]}" if load else ""
    return f"_Measured on {machine_class(env)}{load_text}; {env.get('created_utc', '')}._"


def latency_markdown(result: dict[str, Any]) -> str:
    """Per (tower, batch, backend): latency percentiles, speedups, size, memory, peak fraction, fidelity."""
    out = [f"### Latency: {result['model']} ({result.get('weights')} weights)", "", caption(result), ""]
    rates = result.get("rates") or {}
    if rates:
        out += [f"Attainable matmul rate: FP32 {fmt(rates.get('fp32'), '.0f')} GFLOP/s, "
                f"INT8 {fmt(rates.get('int8'), '.0f')} GOP/s (benchmarks/peak.py).", ""]
    headers = ["tower", "batch", "backend", "p50 ms", "p90 ms", "p99 ms", "samples/s", "x torch", "x ORT fp32",
               "size MB", "peak RSS MiB", "GFLOP/sample", "% of peak", "% of roofline", "mean cos", "runs"]
    rows = []
    for r in result["results"]:
        if r.get("status") != "ok":
            continue
        mem = r.get("memory") or {}
        fid = r.get("fidelity") or {}
        rows.append([r["tower"], r["batch"], r["backend"], fmt(r["p50_ms"]), fmt(r["p90_ms"]), fmt(r["p99_ms"]),
                     fmt(r["throughput_per_s"], ".1f"), fmt(r.get("speedup_vs_torch")),
                     fmt(r.get("speedup_vs_ort_fp32")), fmt(r.get("size_bytes"), ".1f", 1e-6),
                     fmt(mem.get("peak_mib"), ".0f"), fmt(r.get("gflops_per_sample"), ".3g"),
                     fmt(r.get("fraction_of_peak"), ".1f", 100), fmt(r.get("fraction_of_roofline"), ".1f", 100),
                     fmt(fid.get("mean_cosine"), ".5f"), f"{r['iterations']}{'' if r.get('stable') else '*'}"])
    out += [table(headers, rows), "",
            "`*` = stopped at the time cap before the median was stable. `x torch` / `x ORT fp32`: p50 speedup over "
            "PyTorch eager FP32 / ONNX Runtime FP32 in the same interleaved run. `% of peak`: counted GFLOPs / p50 / "
            "attainable rate of the form's precision; `% of roofline`: the same with INT8 and float work each at its "
            "own rate. `peak RSS`: the configuration's own worker process (interpreter and libraries included).", ""]
    problems = [r for r in result["results"] if r.get("status") in ("error", "unavailable") and r["batch"] ==
                min(x["batch"] for x in result["results"])]
    if problems:
        seen = set()
        lines = []
        for r in problems:
            key = (r["backend"], r.get("reason") or r.get("error"))
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- `{r['backend']}` ({r['status']}): {r.get('reason') or r.get('error')}")
        out += ["Not measured here:", "", *lines, ""]
    return "\n".join(out)


def targets_markdown(checks: list[dict[str, Any]]) -> str:
    headers = ["tower", "INT8 form", "p50 ms", "x ORT fp32 (>= 2.5)", "x torch (>= 5)", "mean cos (>= threshold)",
               "% INT8 peak (>= 60, large towers)", "status"]
    rows = []
    notes = []
    for c in checks:
        if "checks" not in c:
            rows.append([c["tower"], "-", "-", "-", "-", "-", "-", c["status"]])
            continue
        k = c["checks"]
        cell = lambda name, spec=".2f", scale=1.0: (  # noqa: E731
            "-" if name not in k else f"{fmt(k[name]['value'], spec, scale)} {'ok' if k[name]['ok'] else 'MISS'}")
        rows.append([c["tower"], c.get("backend") or "-", fmt(c.get("p50_ms")), cell("speedup_vs_ort_fp32"),
                     cell("speedup_vs_torch"), cell("fidelity", ".5f"), cell("fraction_of_int8_peak", ".1f", 100),
                     c["status"]])
        if c.get("why"):
            why = c["why"]
            share = why.get("kernel_time_share")
            parts = [f"{fmt(why.get('int8_flop_share'), '.1f', 100)}% of counted FLOPs run in INT8 kernels "
                     f"(attention matmuls {fmt(why.get('attention_flop_share'), '.1f', 100)}%, "
                     f"{why.get('float_linear_nodes', 0)} weight layers float = "
                     f"{fmt(why.get('float_linear_gflops'), '.2f')} GFLOP)"]
            if share:
                parts.append("kernel time: " + ", ".join(f"{k2} {fmt(v, '.0f', 100)}%" for k2, v in share.items()))
            if why.get("top_ops_ms"):
                parts.append("top ops (ms/run): " + ", ".join(f"{op} {ms:.2f}" for op, ms in why["top_ops_ms"].items()))
            notes.append(f"- **{c['tower']}** ({c['status']}): " + "; ".join(parts))
    out = ["### Targets (batch 1)", "", table(headers, rows), ""]
    if notes:
        out += ["Why (from the FLOP count and ORT's profiler):", "", *notes, ""]
    return "\n".join(out)


def peak_markdown(result: dict[str, Any]) -> str:
    headers = ["shape (M x K x N)", "precision", "GFLOP", "p50 ms", "rate at p50", "rate at best run", "runs"]
    rows = [[r["label"], r["precision"], fmt(r["gflop"], ".3f"), fmt(r.get("p50_ms")), fmt(r.get("rate_gops"), ".0f"),
             fmt(r.get("best_rate_gops"), ".0f"), r.get("iterations", "-")] for r in result["shapes"]]
    att = result.get("attainable", {})
    return "\n".join([
        "### Attainable matmul rate (ONNX Runtime CPU)", "", caption(result), "",
        table(headers, rows), "",
        f"Attainable: FP32 {fmt(att.get('fp32'), '.0f')} GFLOP/s, INT8 (dynamic) {fmt(att.get('int8'), '.0f')} GOP/s, "
        f"ratio {fmt(result.get('int8_over_fp32'))}x ({result.get('threads')} threads; rates in GFLOP/s or GOP/s, "
        "multiply-add = 2).", ""])


def flops_markdown(result: dict[str, Any]) -> str:
    headers = ["tower", "linear+conv GFLOPs (counted)", "imagebind.md", "rel. error", "attention GFLOPs",
               "total GFLOPs", "INT8 share (int8-dynamic)", "INT8 share (int8-qdq)"]
    rows = []
    for tower, forms in result["towers"].items():
        fp32 = forms.get("fp32", {})
        check = result.get("check", {}).get(tower, {})
        rows.append([tower, fmt(fp32.get("reference_gflops"), ".3f"), fmt(check.get("reference"), ".1f"),
                     fmt(check.get("rel_error"), "+.1f", 100) + ("%" if check else ""),
                     fmt(fp32.get("by_kind", {}).get("attention"), ".3f"), fmt(fp32.get("total_gflops"), ".3f"),
                     fmt(forms.get("int8-dynamic", {}).get("int8_fraction"), ".1f", 100),
                     fmt(forms.get("int8-qdq", {}).get("int8_fraction"), ".1f", 100)])
    return "\n".join([f"### FLOPs per sample: {result['model']} (counted from the ONNX graphs)", "",
                      table(headers, rows), "",
                      "imagebind.md's figures (torch FlopCounter) count linear layers and conv stems only; the "
                      "attention matmuls (Q.K^T, P.V) are listed separately. INT8 share: counted FLOPs that run in "
                      "integer kernels.", ""])


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf floats replaced by None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_outputs(out_dir: str | os.PathLike[str], name: str, result: dict[str, Any], markdown: str) -> list[Path]:
    """Write ``<name>.json`` (strict JSON) and ``<name>.md`` atomically into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    atomic_write_json(paths[0], json_safe(result))
    with atomic_open(paths[1], "w") as fh:
        fh.write(markdown.rstrip() + "\n")
    return paths
