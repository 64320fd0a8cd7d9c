"""FP16 and INT8 forms of exported ONNX towers, with measured fidelity against FP32.

ONNX files in, ONNX files out, plus a JSON-ready record per artifact for the bundle manifest:

- ``convert_fp16``: FP16 with LayerNorm / Softmax / reductions / Pow / Sqrt and overflow-prone
  nodes (``collect_tensor_ranges``) kept FP32; IO stays FP32. For TensorRT and GPU EPs.
- ``quantize_qdq``: symmetric INT8 Q/DQ on GEMM/Conv inputs, the TensorRT artifact.
- ``quantize_with_fallback``: ``quantize_qdq`` that returns the most sensitive nodes to float until
  the embedding's cosine to FP32 meets the threshold; the default INT8 path.
- ``quantize_dynamic_cpu``: dynamic INT8 for ONNX Runtime's CPU backend.
- ``int8_backend_plan``: which INT8 form each backend gets, and why.
- ``compare_embeddings`` / ``run_onnx`` / ``compare_latency``: the measurements;
  ``fp16_fidelity`` measures an FP16 model through an FP32 twin that rounds every FP16 tensor,
  since ONNX Runtime's CPU backend silently computes most FP16 nodes in FP32.

Host-side: needs ``onnx`` and ``onnxconverter-common`` (the ``export`` extra), never torch.
"""

from __future__ import annotations

from .backends import int8_backend_plan
from .config import Fp16Config, QuantConfig
from .fallback import quantize_with_fallback
from .emulate import fp16_emulation_model
from .fidelity import compare_embeddings, fidelity_of, fp16_fidelity, run_onnx
from .fp16 import convert_fp16
from .int8 import quantize_dynamic_cpu, quantize_qdq
from .latency import compare_latency, cpu_flags, measure_latency_ms
from .ranges import collect_tensor_ranges
from .reader import FeedReader
from .sensitivity import rank_nodes

__all__ = [
    "FeedReader",
    "Fp16Config",
    "QuantConfig",
    "collect_tensor_ranges",
    "compare_embeddings",
    "compare_latency",
    "convert_fp16",
    "cpu_flags",
    "fidelity_of",
    "fp16_emulation_model",
    "fp16_fidelity",
    "int8_backend_plan",
    "measure_latency_ms",
    "quantize_dynamic_cpu",
    "quantize_qdq",
    "quantize_with_fallback",
    "rank_nodes",
    "run_onnx",
]
