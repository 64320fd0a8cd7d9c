"""FP16 conversion with FP32 islands for the precision-sensitive and overflow-prone nodes."""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._lazy import require
from ..errors import ExportError
from ._onnxfile import (
    check_source,
    file_record,
    load_model,
    onnx_module,
    op_histogram,
    save_model,
    uses_external_data,
)
from .config import FP16_MAX, Fp16Config
from .fidelity import fp16_fidelity

logger = logging.getLogger(__name__)


def overflow_nodes(model: Any, calibration_ranges: Mapping[str, float] | None, limit: float) -> dict[str, str]:
    """Nodes that must stay FP32 because a value they touch may not fit FP16: ``{node name: reason}``.

    A node is kept when one of its outputs or inputs had an observed abs max above ``limit`` (a
    consumer would cast the big value to FP16 and get inf), or when one of its weights exceeds the
    FP16 maximum outright.
    """
    onnx = onnx_module()
    ranges = dict(calibration_ranges or {})
    big_weights = set()
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and init.data_location != onnx.TensorProto.EXTERNAL:
            values = onnx.numpy_helper.to_array(init)
            if values.size and float(np.max(np.abs(values))) > FP16_MAX:
                big_weights.add(init.name)
    kept: dict[str, str] = {}
    for node in model.graph.node:
        for tensor in list(node.output) + list(node.input):
            peak = ranges.get(tensor)
            if peak is not None and peak > limit:
                kept[node.name] = f"|{tensor}| reaches {peak:.4g} > {limit:.4g}"
                break
            if tensor in big_weights:
                kept[node.name] = f"weight {tensor} exceeds the FP16 maximum {FP16_MAX:g}"
                break
    return kept


def _ensure_node_names(model: Any) -> None:
    # The converter's node block list works by name; exporters sometimes leave names empty.
    used = {node.name for node in model.graph.node if node.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{i}"
            while candidate in used:
                candidate += "_"
            node.name = candidate
            used.add(candidate)


def _bypass_identities(model: Any) -> None:
    # Exporters emit Identity nodes to alias shared weights; the converter then types the alias
    # FP16 while a blocked consumer expects FP32. Consumers can read the source tensor directly.
    graph_outputs = {o.name for o in model.graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    if not alias:
        return
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    stale = [vi for vi in model.graph.value_info if vi.name in alias]
    for vi in stale:
        model.graph.value_info.remove(vi)


def _split_shared_initializers(model: Any, blocked_ops: set[str], blocked_nodes: set[str]) -> None:
    # An initializer read by both an FP32-kept node and an FP16 node stays FP32 in the converter,
    # which leaves the FP16 reader with a type mismatch: give the FP16 readers their own copy.
    onnx = onnx_module()
    initializers = {init.name: init for init in model.graph.initializer}
    readers: dict[str, list[tuple[Any, int, bool]]] = {}
    for node in model.graph.node:
        blocked = node.op_type in blocked_ops or node.name in blocked_nodes
        for i, name in enumerate(node.input):
            if name in initializers:
                readers.setdefault(name, []).append((node, i, blocked))
    for name, uses in readers.items():
        init = initializers[name]
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        if any(b for _, _, b in uses) and not all(b for _, _, b in uses):
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = f"{name}__fp16"
            model.graph.initializer.append(copy)
            for node, i, blocked in uses:
                if not blocked:
                    node.input[i] = copy.name


def _fix_float_casts(model: Any, blocked_ops: set[str], blocked_nodes: set[str]) -> int:
    # The converter retypes a Cast(to=FLOAT)'s output as FP16 but leaves the attribute; align them.
    onnx = onnx_module()
    fp16_tensors = {vi.name for vi in model.graph.value_info if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or node.op_type in blocked_ops or node.name in blocked_nodes:
            continue
        if node.output[0] not in fp16_tensors:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.FLOAT16
                fixed += 1
    return fixed


def _restore_float_outputs(model: Any, float_outputs: set[str]) -> list[str]:
    # When the node producing a graph output is kept FP32, the converter ends the graph with a
    # Cast to FP16 despite keep_io_types; make that Cast (or an added one) produce FP32 again.
    onnx = onnx_module()
    producers = {out: node for node in model.graph.node for out in node.output}
    fixed = []
    for output in model.graph.output:
        if output.name not in float_outputs or output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        producer = producers.get(output.name)
        if producer is not None and producer.op_type == "Cast":
            for attr in producer.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT
        else:
            half = f"{output.name}__fp16"
            if producer is not None:
                producer.output[list(producer.output).index(output.name)] = half
            model.graph.node.append(onnx.helper.make_node("Cast", [half], [output.name], name=f"{half}_to_fp32",
                                                          to=onnx.TensorProto.FLOAT))
        output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        fixed.append(output.name)
    return fixed


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str], config: Fp16Config | None = None,
                 calibration_ranges: Mapping[str, float] | None = None, *,
                 val_feeds: Sequence[Any] | None = None) -> dict[str, Any]:
    """Convert an FP32 ONNX file to FP16, keeping ``config.fp32_op_types``/``fp32_nodes`` and overflow-prone nodes FP32.

    ``calibration_ranges`` maps tensor names to observed abs max (``collect_tensor_ranges``); nodes
    touching values above ``config.overflow_limit`` stay FP32. Graph inputs and outputs stay FP32
    when ``config.keep_io_types``. Models with external data are read with it and written with
    ``<dst name>.data`` when the result is above ``config.external_data_threshold_bytes``.
    With ``val_feeds`` the record also holds ``fidelity`` against ``src`` (``fp16_fidelity``).
    Returns the manifest record (paths, hashes, kept-FP32 nodes, op counts, timings).
    """
    config = config or Fp16Config()
    float16 = require("onnxconverter_common.float16", extra="export", purpose="FP16 conversion")
    onnx = onnx_module()
    src = check_source(src)
    dst = Path(dst)
    t0 = time.perf_counter()

    # Shape inference must see the graph only: a > 2 GiB model cannot go through the in-memory
    # inferencer, but the initializers' dims are all it needs. The data is attached afterwards.
    model = load_model(src, with_data=False)
    external_src = uses_external_data(model)
    _ensure_node_names(model)
    _bypass_identities(model)
    float_outputs = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ExportError(f"{src}: ONNX shape inference failed before FP16 conversion ({exc})") from exc
    if external_src:
        onnx.external_data_helper.load_external_data_for_model(model, os.fspath(src.parent))

    kept_for_range = overflow_nodes(model, calibration_ranges, config.overflow_limit)
    node_block = sorted(set(config.fp32_nodes) | set(kept_for_range))
    blocked_ops = set(config.fp32_op_types)
    _split_shared_initializers(model, blocked_ops, set(node_block))
    missing = sorted(set(config.fp32_nodes) - {n.name for n in model.graph.node})
    if missing:
        logger.warning("Fp16Config.fp32_nodes names %s that are not in %s", missing, src)
    try:
        with warnings.catch_warnings(record=True) as clamped:
            # The converter warns once per weight tensor with values below FP16's smallest
            # subnormal (LayerNorm eps constants, tiny weights); one summary line is enough.
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(
                model,
                min_positive_val=2.0**-24,  # smallest FP16 subnormal; the default 1e-7 is no different in practice
                max_finite_val=FP16_MAX,
                keep_io_types=config.keep_io_types,
                disable_shape_infer=True,
                op_block_list=list(config.fp32_op_types),
                node_block_list=node_block,
            )
    except Exception as exc:
        raise ExportError(f"{src}: FP16 conversion failed ({exc})") from exc
    if clamped:
        logger.info("FP16: %d tensors had values clamped to the FP16 range (e.g. %s)", len(clamped), clamped[0].message)
    _fix_float_casts(converted, blocked_ops, set(node_block))
    if config.keep_io_types:
        _restore_float_outputs(converted, float_outputs)
    external = save_model(converted, dst, config.external_data_threshold_bytes)
    elapsed = time.perf_counter() - t0

    fp32_kept = sorted(n.name for n in converted.graph.node
                       if n.op_type in set(config.fp32_op_types) or n.name in set(node_block))
    record = {
        "kind": "onnx-fp16",
        "source": os.fspath(src),
        "artifact": file_record(dst),
        "external_data": external,
        "config": config.to_dict(),
        "fp32_op_types": list(config.fp32_op_types),
        "fp32_nodes_for_range": kept_for_range,
        "fp32_nodes": fp32_kept,
        "used_calibration_ranges": calibration_ranges is not None,
        "ops": op_histogram(converted),
        "seconds": round(elapsed, 3),
        "onnx_version": onnx.__version__,
        "converter": "onnxconverter_common.float16.convert_float_to_float16",
        "intended_backends": ["tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda"],
    }
    # The in-memory models (FP32 source and FP16 result: 3.8 GB for imagebind_huge vision) must not stay
    # alive while the fidelity check builds the emulation twin and runs two ORT sessions.
    del model, converted
    gc.collect()
    if val_feeds is not None:
        record["fidelity"] = fp16_fidelity(src, dst, val_feeds)
    logger.info("FP16: %s -> %s (%d nodes kept FP32, %d for range) in %.1f s",
                src, dst, len(fp32_kept), len(kept_for_range), elapsed)
    return record
