"""INT8 quantization: explicit Q/DQ for TensorRT and dynamic INT8 for the ONNX Runtime CPU backend.

Q/DQ (``quantize_qdq``) is symmetric with zero point 0 everywhere, per-channel weights, and Q/DQ
pairs only on the inputs of the configured GEMM-like ops, so LayerNorm, Softmax, GELU and residual
Adds stay float: the form TensorRT's explicit-quantization parser accepts (edge.md 2.2).

On a CPU this Q/DQ graph is not faster than FP32 (ORT computes most of it as dequantize + float
MatMul); ``quantize_dynamic_cpu`` writes MatMulInteger/DynamicQuantizeLinear instead, which ORT's
CPU kernels do run in INT8 (VNNI on x86, dot-product on ARM). See ``backends.int8_backend_plan``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

from ..errors import CalibrationError, ConfigError, ExportError
from ._onnxfile import check_source, file_record, load_model, model_size_bytes, onnx_module, op_histogram, staged_output
from .attention_fusion import fused_copy
from .config import QuantConfig
from .fidelity import fidelity_of
from .reader import FeedReader

logger = logging.getLogger(__name__)

_CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# quantize_static/dynamic write external data when asked; keep well under protobuf's 2 GiB.
_EXTERNAL_DATA_ABOVE = 1_800_000_000


class _DropPreprocessHint(logging.Filter):
    # ORT logs "Please consider to run pre-processing" on the root logger on every call; whether
    # to pre-process is QuantConfig.preprocess's decision, recorded in the record.
    def filter(self, record: logging.LogRecord) -> bool:
        return "consider to run pre-processing" not in str(record.msg) and "consider pre-processing" not in str(record.msg)


@contextlib.contextmanager
def quiet_preprocess_hint() -> Iterator[None]:
    root = logging.getLogger()
    hint_filter = _DropPreprocessHint()
    root.addFilter(hint_filter)
    try:
        yield
    finally:
        root.removeFilter(hint_filter)


def as_reader(data: CalibrationDataReader | Iterable[Any], model_path: str | os.PathLike[str]) -> CalibrationDataReader:
    """Pass a ``CalibrationDataReader`` through; wrap arrays / feed dicts in a ``FeedReader``."""
    if isinstance(data, CalibrationDataReader):
        return data
    return FeedReader(data, model_path=model_path)


@contextlib.contextmanager
def preprocessed(src: Path, enabled: bool) -> Iterator[Path]:
    """Yield ``src`` or a ``quant_pre_process``-ed copy of it (symbolic shape inference + ORT basic optimisation)."""
    if not enabled:
        yield src
        return
    external = model_size_bytes(src) > _EXTERNAL_DATA_ABOVE
    with tempfile.TemporaryDirectory(prefix="edgebind-prep-") as tmp:
        out = Path(tmp) / src.name
        try:
            quant_pre_process(os.fspath(src), os.fspath(out), save_as_external_data=external,
                              all_tensors_to_one_file=True, external_data_location=src.name + ".data")
        except Exception as exc:
            raise ExportError(f"{src}: quant_pre_process failed ({exc}); set QuantConfig.preprocess=false") from exc
        yield out


def _calibrator_options(config: QuantConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"symmetric": config.symmetric}
    if config.method == "entropy":
        # quantize_static leaves the entropy histogram at 128 bins = 128 quantized bins, where the
        # KL search has a single candidate, the full range: entropy then equals min-max (measured).
        options.update(num_bins=2048, num_quantized_bins=128)
    elif config.method == "percentile":
        options.update(num_bins=2048, percentile=config.percentile)
    return options


def calibrate(model_path: str | os.PathLike[str], reader: CalibrationDataReader | Iterable[Any],
              config: QuantConfig, cache_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Run the configured calibrator over ``reader`` and save the tensor ranges to ``cache_path`` (JSON).

    The cache is ONNX Runtime's ``calibration_cache_path`` format: ``quantize_qdq`` reuses it
    instead of calibrating again (the fallback loop re-quantizes with the same ranges), and it can
    ship with the model as a record of its activation scales.
    """
    model_path = Path(model_path)
    calib = as_reader(reader, model_path)
    if isinstance(calib, FeedReader):
        calib.rewind()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgebind-calib-") as tmp:
        calibrator = create_calibrator(
            model_path, list(config.op_types), augmented_model_path=os.path.join(tmp, "augmented.onnx"),
            calibrate_method=_CALIBRATION_METHODS[config.method],
            use_external_data_format=model_size_bytes(model_path) > _EXTERNAL_DATA_ABOVE,
            extra_options=_calibrator_options(config),
        )
        # The calibrator keeps its augmented FP32 model proto after opening the session on it, and collecting
        # ranges reads only the session: dropping the proto frees one copy of the weights (2.5 GB for vision).
        calibrator.model = None
        gc.collect()
        chatter = io.StringIO()  # ORT's histogram calibrators print progress to stdout
        try:
            with contextlib.redirect_stdout(chatter):
                calibrator.collect_data(calib)
                ranges = calibrator.compute_data()
        except Exception as exc:
            raise CalibrationError(f"{model_path}: calibration failed ({type(exc).__name__}: {exc})") from exc
        finally:
            if chatter.getvalue():
                logger.debug("calibrator: %s", chatter.getvalue().strip())
    save_tensors_data(ranges, cache_path)
    return {"method": config.method, "tensors": len(ranges.data), "seconds": round(time.perf_counter() - t0, 3)}


def qdq_extra_options(config: QuantConfig) -> dict[str, Any]:
    """``quantize_static`` extra options implementing the config (symmetric, GEMM inputs only)."""
    return {
        "ActivationSymmetric": config.symmetric,
        "WeightSymmetric": config.symmetric,
        # Q/DQ on GEMM inputs only: a quantized MatMul output would drag the residual Add /
        # LayerNorm that consume it into INT8 in TensorRT.
        "OpTypesToExcludeOutputQuantization": list(config.op_types),
    }


def activation_matmuls(model: Any) -> list[str]:
    """MatMul nodes whose second input is computed, not a weight (attention Q.K^T and P.V).

    ORT's Q/DQ path ignores its ``MatMulConstBOnly`` option, so these are excluded by name.
    """
    constants = {init.name for init in model.graph.initializer}
    constants.update(out for node in model.graph.node if node.op_type == "Constant" for out in node.output)
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] not in constants]


def restore_float_consumers(path: Path, op_types: Iterable[str], excluded: Iterable[str]) -> int:
    """Rewire non-quantized readers of a Q/DQ'd activation back to the float tensor; returns how many.

    ORT points *every* reader of a quantized activation at the DequantizeLinear output, so a
    residual Add or LayerNorm that shares its input with a MatMul would read INT8-rounded values
    (and TensorRT would fuse it into INT8). Only the graph is rewritten; external data is untouched.
    """
    onnx = onnx_module()
    model = load_model(path, with_data=False)
    initializers = {init.name for init in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    quantizable, skip = set(op_types), set(excluded)
    float_source = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in initializers:
            q = producers.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                float_source[node.output[0]] = q.input[0]
    restored = 0
    for node in model.graph.node:
        if node.op_type in quantizable and node.name not in skip:
            continue
        for i, name in enumerate(node.input):
            if name in float_source:
                node.input[i] = float_source[name]
                restored += 1
    if restored:
        onnx.save_model(model, os.fspath(path))
    return restored


def _quantized_nodes(model: Any, op_types: Iterable[str]) -> tuple[list[str], list[str]]:
    """(nodes of ``op_types`` fed by a DequantizeLinear, nodes of ``op_types`` left float)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    quantized, kept = [], []
    wanted = set(op_types)
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        fed_by_dq = any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
        (quantized if fed_by_dq else kept).append(node.name)
    return quantized, kept


def _nonzero_zero_points(model: Any) -> list[str]:
    """Names of Q/DQ zero points that are not all zero (TensorRT rejects them)."""
    onnx = onnx_module()
    inits = {init.name: init for init in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and onnx.numpy_helper.to_array(zp).any():
                bad.append(node.input[2])
    return sorted(set(bad))


def quantize_qdq(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                 reader: CalibrationDataReader | Iterable[Any] | None, config: QuantConfig | None = None,
                 nodes_to_exclude: Iterable[str] = (),
                 calibration_cache: str | os.PathLike[str] | None = None, *,
                 val_feeds: Sequence[Any] | None = None) -> dict[str, Any]:
    """Static INT8 with explicit Q/DQ nodes (the TensorRT / ORT TensorRT EP artifact); returns the record.

    ``reader`` is a ``CalibrationDataReader`` or arrays / feed dicts. Nodes in
    ``config.nodes_to_exclude`` plus ``nodes_to_exclude`` stay float. ``calibration_cache``: a JSON
    path; when the file exists its ranges are used and ``reader`` may be None, otherwise the ranges
    computed here are saved there. With ``val_feeds`` the record holds ``fidelity`` against ``src``. Raises ``CalibrationError`` when there is neither data nor cache,
    ``ExportError`` when the result is not symmetric.
    """
    config = config or QuantConfig()
    src = check_source(src)
    dst = Path(dst)
    if config.method not in _CALIBRATION_METHODS:
        raise ConfigError(f"QuantConfig.method: expected one of {sorted(_CALIBRATION_METHODS)}, got {config.method!r}")
    t0 = time.perf_counter()
    with preprocessed(src, config.preprocess) as model_in, tempfile.TemporaryDirectory(prefix="edgebind-q-") as tmp:
        by_policy = [] if config.quantize_activation_matmuls else activation_matmuls(load_model(model_in, with_data=False))
        excluded = sorted(set(config.nodes_to_exclude) | set(nodes_to_exclude) | set(by_policy))
        cache = Path(calibration_cache) if calibration_cache is not None else Path(tmp) / "calibration.json"
        reused = cache.is_file()
        if reused:
            calibration: dict[str, Any] = {"method": config.method, "reused_cache": os.fspath(cache)}
        else:
            if reader is None:
                raise CalibrationError(f"quantize_qdq: no calibration data and no cache file at {cache}")
            calibration = calibrate(model_in, reader, config, cache)
            if calibration_cache is not None:
                calibration["cache"] = os.fspath(cache)
        external = model_size_bytes(model_in) > _EXTERNAL_DATA_ABOVE
        with staged_output(dst) as staged, quiet_preprocess_hint():
            try:
                quantize_static(
                    os.fspath(model_in), os.fspath(staged), None,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(config.op_types),
                    per_channel=config.per_channel,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    use_external_data_format=external,
                    calibrate_method=_CALIBRATION_METHODS[config.method],
                    extra_options=qdq_extra_options(config),
                    calibration_cache_path=os.fspath(cache),
                )
            except Exception as exc:
                raise ExportError(f"{src}: INT8 Q/DQ quantization failed ({type(exc).__name__}: {exc})") from exc
            restored = restore_float_consumers(staged, config.op_types, excluded)
    elapsed = time.perf_counter() - t0
    model = load_model(dst, with_data=False)
    quantized, kept_float = _quantized_nodes(model, config.op_types)
    bad_zero_points = _nonzero_zero_points(load_model(dst)) if config.symmetric else []
    if bad_zero_points:
        raise ExportError(f"{dst}: zero points {bad_zero_points[:5]} are not 0; TensorRT needs symmetric Q/DQ")
    if not quantized:
        logger.warning("INT8 Q/DQ: no node of types %s was quantized in %s", list(config.op_types), src)
    record = {
        "kind": "onnx-int8-qdq",
        "source": os.fspath(src),
        "artifact": file_record(dst),
        "config": config.to_dict(),
        "nodes_excluded": excluded,
        "activation_matmuls_kept_float": sorted(by_policy),
        "float_readers_restored": restored,
        "nodes_quantized": quantized,
        "nodes_kept_float": kept_float,
        "preprocessed": config.preprocess,
        "calibration": calibration,
        "zero_points_all_zero": not bad_zero_points,
        "ops": op_histogram(model),
        "seconds": round(elapsed, 3),
        "onnxruntime_version": ort.__version__,
        "intended_backends": ["tensorrt", "onnxruntime-tensorrt"],
    }
    if val_feeds is not None:
        record["fidelity"] = fidelity_of(src, dst, val_feeds)
    logger.info("INT8 Q/DQ: %s -> %s (%d quantized, %d float) in %.1f s", src, dst, len(quantized), len(kept_float), elapsed)
    return record


def quantize_dynamic_cpu(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                         config: QuantConfig | None = None, *, nodes_to_exclude: Iterable[str] = (),
                         val_feeds: Sequence[Any] | None = None, num_heads: int | None = None) -> dict[str, Any]:
    """Dynamic INT8 for ONNX Runtime's CPU backend: INT8 weights of ``config.dynamic_op_types``,
    activations quantized per run (no calibration). Returns the record, with ``fidelity`` against
    ``src`` when ``val_feeds`` are given. Nodes in ``config.nodes_to_exclude`` plus
    ``nodes_to_exclude`` stay float: pass the Q/DQ fallback's ``nodes_returned_to_float`` to give
    this form the same protection (it has the same outlier weakness, with no fallback loop of its own).
    ``num_heads`` (the tower's attention heads) with ``config.fuse_attention``: fuse each attention
    block into ORT's Attention op first, quantized to QAttention (blocks whose in-projection is
    excluded stay as they are); the record's ``attention_fusion`` says what was fused.

    The Conv stems stay float by default: on the imagebind_huge depth tower ConvInteger changed
    neither the cosine (0.99959 vs 0.99956) nor made it faster (33.6 vs 30.9 ms min, 2 threads).
    """
    config = config or QuantConfig()
    src = check_source(src)
    dst = Path(dst)
    t0 = time.perf_counter()
    external = model_size_bytes(src) > _EXTERNAL_DATA_ABOVE
    excluded = sorted(set(config.nodes_to_exclude) | set(nodes_to_exclude))
    op_types = list(config.dynamic_op_types)
    fusion = None
    with contextlib.ExitStack() as stack:
        source = src
        if config.fuse_attention and num_heads:
            source, fusion = stack.enter_context(fused_copy(src, num_heads, set(excluded)))
            if fusion["fused"]:
                op_types.append("Attention")
        staged = stack.enter_context(staged_output(dst))
        stack.enter_context(quiet_preprocess_hint())
        try:
            quantize_dynamic(
                os.fspath(source), os.fspath(staged),
                op_types_to_quantize=op_types,
                per_channel=config.dynamic_per_channel,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                use_external_data_format=external,
                # DefaultTensorType: shape inference cannot type the outputs of contrib ops (fused Attention).
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx_module().TensorProto.FLOAT},
            )
        except Exception as exc:
            raise ExportError(f"{src}: INT8 dynamic quantization failed ({type(exc).__name__}: {exc})") from exc
    elapsed = time.perf_counter() - t0
    model = load_model(dst, with_data=False)
    ops = op_histogram(model)
    record = {
        "kind": "onnx-int8-dynamic",
        "source": os.fspath(src),
        "artifact": file_record(dst),
        "config": config.to_dict(),
        "op_types": op_types,
        "attention_fusion": fusion,
        "nodes_excluded": excluded,
        "integer_ops": {k: v for k, v in ops.items() if k in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
                                                           "DynamicQuantizeMatMul", "QAttention")},
        "ops": ops,
        "seconds": round(elapsed, 3),
        "onnxruntime_version": ort.__version__,
        "intended_backends": ["onnxruntime-cpu"],
    }
    if val_feeds is not None:
        record["fidelity"] = fidelity_of(src, dst, val_feeds)
    logger.info("INT8 dynamic: %s -> %s in %.1f s", src, dst, elapsed)
    return record
