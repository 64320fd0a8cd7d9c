"""Frozen, JSON-round-trippable settings for FP16 conversion and INT8 quantization.

They are written into the bundle manifest as part of each artifact's record, so every field is a
plain JSON type and ``from_dict`` rejects unknown keys (see ``edgebind._config``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from .._config import ConfigMixin
from ..errors import ConfigError

FP16_MAX = 65504.0

# Ops kept in FP32 by default. Chosen from measurements on a ViT-like tower and MiniLM (see the
# package docstring): the normalisations and reductions accumulate over a whole row, where FP16's
# 10-bit mantissa and 65504 ceiling hurt; everything else (MatMul, Conv, Add, Erf, ...) is FP16-safe.
DEFAULT_FP16_FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceL2",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceLogSumExp",
    "Pow",
    "Sqrt",
)

# Only the GEMM-like ops: LayerNorm, Softmax, GELU and residual Adds stay float (edge.md 3.1 fix 2).
DEFAULT_INT8_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
# Dynamic (CPU) INT8: the patch-embedding Conv stems stay float; see int8.quantize_dynamic_cpu.
DEFAULT_DYNAMIC_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm")

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]


@dataclasses.dataclass(frozen=True)
class Fp16Config(ConfigMixin):
    """How ``convert_fp16`` splits a graph between FP16 and FP32.

    ``fp32_op_types``: op types kept FP32. ``fp32_nodes``: node names kept FP32 in addition.
    ``overflow_fraction``: with calibration ranges, any node whose output abs max exceeds
    ``overflow_fraction * 65504`` stays FP32 (headroom for inputs beyond the calibration set).
    ``keep_io_types``: graph inputs/outputs stay FP32 so callers feed the same arrays.
    ``external_data_threshold_bytes``: above this model size, weights go to ``<name>.data``.
    """

    fp32_op_types: tuple[str, ...] = DEFAULT_FP16_FP32_OPS
    fp32_nodes: tuple[str, ...] = ()
    overflow_fraction: float = 0.25
    keep_io_types: bool = True
    external_data_threshold_bytes: int = 1_800_000_000

    def __post_init__(self) -> None:
        if not 0.0 < self.overflow_fraction <= 1.0:
            raise ConfigError(f"Fp16Config.overflow_fraction: expected a number in (0, 1], got {self.overflow_fraction!r}")
        if self.external_data_threshold_bytes <= 0:
            raise ConfigError(
                "Fp16Config.external_data_threshold_bytes: expected a positive integer, "
                f"got {self.external_data_threshold_bytes!r}"
            )

    @property
    def overflow_limit(self) -> float:
        return self.overflow_fraction * FP16_MAX


@dataclasses.dataclass(frozen=True)
class QuantConfig(ConfigMixin):
    """INT8 settings shared by Q/DQ (TensorRT) and dynamic (ONNX Runtime CPU) quantization.

    Q/DQ: symmetric (zero point 0, as TensorRT requires), per-channel weights, only ``op_types``
    quantized. ``quantize_activation_matmuls`` also quantizes activation-by-activation MatMuls
    (attention Q.K^T and P.V); off by default because the softmax output loses most of its
    resolution in symmetric INT8. ``preprocess`` runs ``quant_pre_process`` first.

    Dynamic (CPU): ``dynamic_op_types`` get INT8 weights; with ``fuse_attention`` each self-attention
    block is first fused into ORT's ``Attention`` op (quantized to ``QAttention``; see
    ``edgebind.quantize.attention_fusion``), when the tower's head count is known.

    Fallback (``quantize_with_fallback``): while mean cosine < ``min_mean_cosine`` (or min cosine
    < ``min_min_cosine`` when set), the ``first_k * growth**round`` most sensitive quantized nodes
    return to float, for at most ``max_rounds`` rounds. ``sensitivity_samples`` caps the number of
    calibration feeds used to rank nodes (each keeps every intermediate tensor in memory).
    """

    method: CalibrationMethodName = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    symmetric: bool = True
    op_types: tuple[str, ...] = DEFAULT_INT8_OP_TYPES
    quantize_activation_matmuls: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    preprocess: bool = False
    dynamic_op_types: tuple[str, ...] = DEFAULT_DYNAMIC_OP_TYPES
    dynamic_per_channel: bool = True
    fuse_attention: bool = True
    min_mean_cosine: float = 0.99
    min_min_cosine: Optional[float] = None
    max_rounds: int = 6
    first_k: int = 1
    growth: float = 2.0
    sensitivity_samples: int = 8

    def __post_init__(self) -> None:
        if not self.op_types:
            raise ConfigError("QuantConfig.op_types: expected at least one op type, e.g. ['MatMul', 'Gemm', 'Conv']")
        if not self.dynamic_op_types:
            raise ConfigError("QuantConfig.dynamic_op_types: expected at least one op type, e.g. ['MatMul', 'Gemm']")
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"QuantConfig.percentile: expected a number in (0, 100], got {self.percentile!r}")
        for name in ("min_mean_cosine", "min_min_cosine"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ConfigError(f"QuantConfig.{name}: expected a cosine in [-1, 1], got {value!r}")
        if self.max_rounds < 0:
            raise ConfigError(f"QuantConfig.max_rounds: expected an integer >= 0, got {self.max_rounds!r}")
        if self.first_k < 1:
            raise ConfigError(f"QuantConfig.first_k: expected an integer >= 1, got {self.first_k!r}")
        if self.growth < 1.0:
            raise ConfigError(f"QuantConfig.growth: expected a number >= 1, got {self.growth!r}")
        if self.sensitivity_samples < 1:
            raise ConfigError(
                f"QuantConfig.sensitivity_samples: expected an integer >= 1, got {self.sensitivity_samples!r}"
            )
