"""Where an ONNX Runtime session spends its time, per operator type, from ORT's own profiler.

Used to explain a configuration that misses its target: e.g. how much of an INT8 tower's time is in
integer GEMMs (MatMulInteger / DynamicQuantizeMatMul / QLinearMatMul), how much in matmuls that
stayed float (attention Q.K^T and P.V, excluded layers) and how much in everything else
(LayerNorm, Softmax, GELU, quantize/dequantize, reshapes). Op names are those of the graph ORT
actually ran, after its fusions.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from .._ort_options import session_options

logger = logging.getLogger(__name__)

INT8_GEMM_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger",
                 "QLinearConv", "QGemm"}
FLOAT_GEMM_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "Conv", "FusedConv"}
# ORT's fused attention: in-projection (INT8 in QAttention) plus the float Q.K^T, softmax and P.V in one kernel.
FUSED_ATTENTION_OPS = {"Attention", "QAttention", "MultiHeadAttention"}
QUANT_OPS = {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLSTM"}


def _category(op: str) -> str:
    if op in INT8_GEMM_OPS:
        return "int8_gemm"
    if op in FLOAT_GEMM_OPS:
        return "float_gemm"
    if op in FUSED_ATTENTION_OPS:
        return "fused_attention"
    if op in QUANT_OPS:
        return "quantize"
    return "other"


def summarize_profile(events: list[dict[str, Any]], runs: int, top: int = 8) -> dict[str, Any]:
    """Aggregate ORT profile events (``cat == "Node"`` kernel times) into per-op and per-category ms per run."""
    by_op: dict[str, float] = {}
    by_node: dict[str, tuple[str, float]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        ms = float(event.get("dur", 0)) / 1000.0
        by_op[op] = by_op.get(op, 0.0) + ms
        node = event["name"][: -len("_kernel_time")]
        prev = by_node.get(node, (op, 0.0))
        by_node[node] = (op, prev[1] + ms)
    total = sum(by_op.values())
    per_run = {op: v / runs for op, v in sorted(by_op.items(), key=lambda kv: -kv[1])}
    categories: dict[str, float] = {}
    for op, ms in per_run.items():
        categories[_category(op)] = categories.get(_category(op), 0.0) + ms
    nodes = sorted(by_node.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "runs": runs,
        "kernel_ms_per_run": total / runs if runs else 0.0,
        "by_op_ms": {op: round(v, 4) for op, v in per_run.items()},
        "by_category_ms": {k: round(v, 4) for k, v in sorted(categories.items())},
        "by_category_share": {k: round(v / (total / runs), 4) for k, v in sorted(categories.items())} if total else {},
        "top_nodes": [{"node": n, "op": op, "ms_per_run": round(ms / runs, 4)} for n, (op, ms) in nodes],
    }


def profile_onnx(path: str | os.PathLike[str], feed: dict[str, np.ndarray], *, threads: int = 2, warmup: int = 2,
                 runs: int = 10) -> dict[str, Any]:
    """Run ``path`` ``runs`` times with ORT's profiler on (CPU EP, full optimisation) and summarise it."""
    ort = require("onnxruntime", purpose="profiling a session")
    with tempfile.TemporaryDirectory(prefix="edgebind-prof-") as tmp:
        options = session_options(ort, threads=threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.fspath(Path(tmp) / "ort")
        session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            session.run(None, feed)
        # Warm-up events are in the same file; keep only the last ``runs`` runs' node events.
        for _ in range(runs):
            session.run(None, feed)
        trace = session.end_profiling()
        events = json.loads(Path(trace).read_text())
    run_starts = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(run_starts) >= runs:
        first = run_starts[-runs]["ts"]
        events = [e for e in events if e.get("ts", 0) >= first]
    summary = summarize_profile(events, runs)
    summary["file"] = Path(path).name
    return summary
