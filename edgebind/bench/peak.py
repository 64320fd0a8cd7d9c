"""The machine's attainable matrix-multiply rate through ONNX Runtime, FP32 and dynamic INT8.

Single-MatMul ONNX models at transformer shapes (``[M, K] x [K, N]`` with a constant weight, as in
every linear layer of a tower) are timed interleaved with the same session settings as the towers.
The INT8 model is the FP32 one put through ``edgebind.quantize.quantize_dynamic_cpu`` (ORT's
``quantize_dynamic`` with the bundle's recipe), so it holds DynamicQuantizeLinear + MatMulInteger
exactly like an ``int8-dynamic`` tower and pays the same per-run activation quantization.

``attainable`` per precision is the best median rate over the shapes (GFLOP/s for FP32, GOP/s for
INT8; a multiply-add counts 2); a tower's achieved fraction of it is its counted FLOPs / latency /
this rate (see ``edgebind.bench.latency``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._config import ConfigMixin
from .._lazy import require
from .._ort_options import session_options
from ..errors import ConfigError
from .timing import StopPolicy, interleave, summarize

logger = logging.getLogger(__name__)

# (label, M, K, N): imagebind_huge linear layers at batch 1 (vision 257 tokens x 1280, audio 229 x 768)
# and one batch-8 vision shape.
HUGE_SHAPES: tuple[tuple[str, int, int, int], ...] = (
    ("vision qkv 257x1280x3840", 257, 1280, 3840),
    ("vision fc1 257x1280x5120", 257, 1280, 5120),
    ("vision fc2 257x5120x1280", 257, 5120, 1280),
    ("audio fc1 229x768x3072", 229, 768, 3072),
    ("vision fc1 batch 8 2056x1280x5120", 2056, 1280, 5120),
)
QUICK_SHAPES: tuple[tuple[str, int, int, int], ...] = (("quick 64x256x1024", 64, 256, 1024),)


@dataclasses.dataclass(frozen=True)
class PeakConfig(ConfigMixin):
    """Which shapes, how many threads, and how long to time them."""

    shapes: tuple[tuple[str, int, int, int], ...] = HUGE_SHAPES
    threads: int = 2
    policy: StopPolicy = StopPolicy(warmup=3, min_iterations=20, min_seconds=2.0, max_seconds=20.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.shapes:
            raise ConfigError("PeakConfig.shapes: expected at least one (label, M, K, N)")
        for shape in self.shapes:
            if len(shape) != 4 or any(not isinstance(d, int) or d < 1 for d in shape[1:]):
                raise ConfigError(f"PeakConfig.shapes: expected (label, M, K, N) with positive ints, got {shape!r}")
        if self.threads < 1:
            raise ConfigError(f"PeakConfig.threads: expected >= 1, got {self.threads}")

    @classmethod
    def quick(cls, threads: int = 2) -> "PeakConfig":
        return cls(shapes=QUICK_SHAPES, threads=threads, policy=StopPolicy.quick())


def build_matmul_model(path: str | os.PathLike[str], m: int, k: int, n: int, seed: int = 0) -> Path:
    """Write an FP32 ONNX model ``y = a @ W`` with ``a: [m, k]`` input and a constant ``W: [k, n]``."""
    onnx = require("onnx", extra="export", purpose="building the matmul peak models")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "W"], ["y"], name="matmul")],
        f"matmul_{m}x{k}x{n}",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgebind-bench")
    model.ir_version = 8
    path = Path(path)
    onnx.save(model, os.fspath(path))
    return path


def build_int8_dynamic(fp32_path: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict[str, Any]:
    """The dynamic-INT8 twin of a matmul model, made exactly as the bundle's ``int8-dynamic`` towers."""
    from ..quantize.int8 import quantize_dynamic_cpu

    record = quantize_dynamic_cpu(fp32_path, dst)
    if not record.get("integer_ops", {}).get("MatMulInteger"):
        raise ConfigError(f"{dst}: quantize_dynamic produced no MatMulInteger ({record.get('ops')})")
    return record


def _session(ort: Any, path: Path, threads: int) -> Any:
    options = session_options(ort, threads=threads)
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def measure_peak(config: PeakConfig | None = None, *, workdir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Time every shape in FP32 and INT8 (interleaved); returns per-shape rates and the attainable ones.

    Result: ``{"shapes": [{label, m, k, n, precision, gflop, p50_ms, ..., rate_gops, best_rate_gops}],
    "attainable": {"fp32": GFLOP/s, "int8": GOP/s}, "int8_over_fp32": ratio, "config": ...}``.
    """
    config = config or PeakConfig()
    ort = require("onnxruntime", purpose="measuring the matmul rate")
    rng = np.random.default_rng(config.seed + 1)
    runs: dict[str, Any] = {}
    meta: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgebind-peak-", dir=workdir) as tmp:
        for label, m, k, n in config.shapes:
            base = Path(tmp) / f"mm_{m}x{k}x{n}"
            fp32 = build_matmul_model(base.with_suffix(".fp32.onnx"), m, k, n, seed=config.seed)
            int8 = base.with_suffix(".int8.onnx")
            build_int8_dynamic(fp32, int8)
            feed = {"a": rng.standard_normal((m, k)).astype(np.float32)}
            for precision, path in (("fp32", fp32), ("int8", int8)):
                session = _session(ort, path, config.threads)
                key = f"{label} {precision}"
                runs[key] = (lambda s=session, f=feed: s.run(None, f))
                meta[key] = {"label": label, "m": m, "k": k, "n": n, "precision": precision,
                             "gflop": 2.0 * m * k * n / 1e9}
        timed = interleave(runs, config.policy)
    rows = []
    for key, info in meta.items():
        entry = timed[key]
        if "error" in entry or not entry["times_ms"]:
            rows.append({**info, "error": entry.get("error", "no runs")})
            continue
        stats = summarize(entry["times_ms"])
        rows.append({**info, **stats, "stable": entry["stable"],
                     "rate_gops": info["gflop"] / (stats["p50_ms"] / 1000.0),
                     "best_rate_gops": info["gflop"] / (stats["min_ms"] / 1000.0)})
    attainable: dict[str, float] = {}
    for precision in ("fp32", "int8"):
        rates = [r["rate_gops"] for r in rows if r["precision"] == precision and "rate_gops" in r]
        if rates:
            attainable[precision] = max(rates)
    ratio = attainable["int8"] / attainable["fp32"] if len(attainable) == 2 else None
    logger.info("attainable matmul rate: %s (int8/fp32 %.2f)",
                {k: round(v, 1) for k, v in attainable.items()}, ratio or float("nan"))
    return {"config": config.to_dict(), "threads": config.threads, "shapes": rows, "attainable": attainable,
            "int8_over_fp32": ratio, "units": "GFLOP/s (fp32) and GOP/s (int8); multiply-add = 2"}
