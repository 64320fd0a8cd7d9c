"""Which INT8 form each backend gets, as a recorded decision with its reasons and measurements."""

from __future__ import annotations

from typing import Any, Mapping

from .latency import cpu_flags

# imagebind_huge towers, random weights, ORT 1.32 CPU, 2 threads, batch 1 (min ms over runs).
# The machine: depth FP32 22.7, plain quantize_static Q/DQ 38.3 (cos 0.979), GEMM-only
# per-channel Q/DQ 24.9, dynamic 10.4 (cos 0.9997); audio 89.3 -> 32.7, thermal 77.2 -> 28.0.
# Our dev box (AVX-512 VNNI, shared): depth FP32 76.7 / GEMM-only Q/DQ 38.0 (cos 0.9990) / dynamic
# 30.9 (cos 0.9996); thermal 220 / 98 / 93; audio 236 / 107 / 106. Dynamic is never slower, so it
# is the CPU default; a measurement passed to int8_backend_plan overrides it.
_CPU_REASON = ("ONNX Runtime's CPU EP runs dynamic INT8 (DynamicQuantizeLinear + MatMulInteger) in integer kernels, "
               "while a Q/DQ graph is mostly dequantize + float GEMM there, i.e. no faster than FP32")
_TRT_REASON = ("TensorRT (>= 10 explicit quantization, mandatory in TRT 11) and the ORT TensorRT EP read INT8 from "
               "symmetric Q/DQ nodes; dynamic-quantization ops (MatMulInteger, DynamicQuantizeLinear) are not "
               "TensorRT INT8 layers")


def int8_backend_plan(qdq_record: Mapping[str, Any], dynamic_record: Mapping[str, Any] | None = None,
                      cpu_latency_ms: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """The INT8 artifact per backend, with the reason, for the manifest.

    ``cpu_latency_ms``: optional ``latency.compare_latency`` output with keys ``fp32``, ``int8-qdq``
    and ``int8-dynamic``. When given, the CPU backend gets whichever INT8 form measured faster (by
    ``min_ms``), and the figures are recorded; otherwise it gets the dynamic form when there is one.
    """
    plan: dict[str, Any] = {
        "tensorrt": {"form": "int8-qdq", "artifact": qdq_record["artifact"]["path"], "reason": _TRT_REASON},
        "onnxruntime-tensorrt": {"form": "int8-qdq", "artifact": qdq_record["artifact"]["path"], "reason": _TRT_REASON},
    }
    cpu_form, reason = "int8-qdq", "no dynamic INT8 artifact was produced"
    if dynamic_record is not None:
        cpu_form, reason = "int8-dynamic", _CPU_REASON
    if cpu_latency_ms and dynamic_record is not None and {"int8-qdq", "int8-dynamic"} <= set(cpu_latency_ms):
        qdq_ms = cpu_latency_ms["int8-qdq"]["min_ms"]
        dyn_ms = cpu_latency_ms["int8-dynamic"]["min_ms"]
        if qdq_ms < dyn_ms:
            cpu_form = "int8-qdq"
            reason = f"measured here: Q/DQ {qdq_ms:.2f} ms < dynamic {dyn_ms:.2f} ms (min over runs)"
        else:
            reason = f"{_CPU_REASON}; measured here: dynamic {dyn_ms:.2f} ms <= Q/DQ {qdq_ms:.2f} ms (min over runs)"
        if "fp32" in cpu_latency_ms:
            reason += f", FP32 {cpu_latency_ms['fp32']['min_ms']:.2f} ms"
    cpu_record = dynamic_record if cpu_form == "int8-dynamic" else qdq_record
    plan["onnxruntime-cpu"] = {"form": cpu_form, "artifact": cpu_record["artifact"]["path"],  # type: ignore[index]
                               "reason": reason}
    if cpu_latency_ms:
        plan["cpu_latency_ms"] = {k: dict(v) for k, v in cpu_latency_ms.items()}
        plan["cpu"] = cpu_flags()
    return plan
