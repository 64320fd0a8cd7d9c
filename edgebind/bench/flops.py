"""FLOPs of an exported tower, counted from its ONNX graph (MatMul / Gemm / Conv and their INT8 forms).

The batch dim is fixed to 1 and shapes are inferred with ONNX Runtime's symbolic shape inference
(it follows the Shape -> Gather -> Concat -> Reshape chains of the attention blocks, which plain
``onnx.shape_inference`` leaves unknown); without sympy it falls back to ``onnx.shape_inference``
and reports the nodes it could not size. A multiply-add counts as 2 FLOPs, bias adds and
elementwise ops are not counted (the convention of torch's FlopCounter, which gave the reference
figures in imagebind.md).

Each counted node is classified by how the runtime executes it:

- ``precision``: "int8" for MatMulInteger / ConvInteger / QLinear* / DynamicQuantizeMatMul and for
  a MatMul/Gemm/Conv whose two operands both come from DequantizeLinear (ORT fuses that Q/DQ
  pattern into an integer kernel); else "fp16" or "fp32" from the input's element type.
- ``kind``: "linear" (one operand is a weight: an initializer, possibly behind DequantizeLinear /
  Transpose / Cast), "conv", or "attention" (both operands are activations: Q.K^T and P.V).

imagebind.md's per-tower GFLOPs count linear + conv only (FlopCounter does not see the fused
attention kernel); ``reference_gflops`` is that sum, ``total_gflops`` adds the attention matmuls.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

from .._lazy import is_available, require
from ..errors import ConfigError

logger = logging.getLogger(__name__)

# imagebind.md, "Parameter counts" table: GFLOPs per sample (1 clip), FlopCounter on the official code.
REFERENCE_GFLOPS_HUGE = {"vision": 324.0, "text": 46.5, "audio": 39.0, "thermal": 33.5, "depth": 8.4, "imu": 9.5}

_INT8_OPS = {"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul",
             "MatMulIntegerToFloat"}
_MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_CONV_OPS = {"Conv", "ConvInteger", "QLinearConv"}
# ORT's fused attention (the int8-dynamic form): in-projection GEMM + the Q.K^T / P.V core in one node.
_ATTENTION_OPS = {"Attention", "QAttention"}
_COUNTED = _MATMUL_OPS | _CONV_OPS | _ATTENTION_OPS | {"Gemm"}
_PASS_THROUGH = {"DequantizeLinear", "Transpose", "Cast", "Identity", "Reshape", "Unsqueeze"}
# Operand positions of the two multiplied tensors per op (QLinear* interleave scales/zero points).
_OPERANDS = {"QLinearMatMul": (0, 3), "QLinearConv": (0, 3)}


def _fix_batch(model: Any, batch: int) -> None:
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch


def _infer(model: Any) -> tuple[Any, str]:
    if is_available("sympy"):
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        try:
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True), "onnxruntime symbolic"
        except Exception as exc:  # noqa: BLE001 - fall back to onnx's inference below
            logger.warning("symbolic shape inference failed (%s); falling back to onnx.shape_inference", exc)
    onnx = require("onnx", extra="export", purpose="counting FLOPs from an ONNX graph")
    return onnx.shape_inference.infer_shapes(model, data_prop=True), "onnx.shape_inference"


def _shape_table(model: Any) -> tuple[dict[str, list[Any]], dict[str, int]]:
    shapes: dict[str, list[Any]] = {}
    elem: dict[str, int] = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        tt = vi.type.tensor_type
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        elem[vi.name] = tt.elem_type
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
        elem[init.name] = init.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
                    elem[node.output[0]] = attr.t.data_type
    return shapes, elem


def _known(shape: list[Any] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def _node_flops(node: Any, shapes: dict[str, list[Any]]) -> int | None:
    a_idx, b_idx = _OPERANDS.get(node.op_type, (0, 1))
    out = shapes.get(node.output[0])
    if node.op_type in _MATMUL_OPS:
        a = shapes.get(node.input[a_idx])
        if not (_known(out) and _known(a)) or not a:
            return None
        return 2 * math.prod(out) * a[-1]  # type: ignore[index]
    if node.op_type == "Gemm":
        a = shapes.get(node.input[0])
        if not (_known(out) and _known(a)) or len(a) != 2:  # type: ignore[arg-type]
            return None
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        k = a[0] if trans_a else a[1]  # type: ignore[index]
        return 2 * math.prod(out) * k  # type: ignore[arg-type]
    w = shapes.get(node.input[b_idx])
    if not (_known(out) and _known(w)):
        return None
    return 2 * math.prod(out) * math.prod(w[1:])  # type: ignore[index]


def _attention_flops(node: Any, shapes: dict[str, list[Any]]) -> tuple[int, int] | None:
    """(in-projection, attention core) FLOPs of an Attention / QAttention node; None when unsized."""
    x, weight, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
    past_index = 4  # QAttention nodes arrive rewritten as Attention (see _qattention_as_attention)
    past = shapes.get(node.input[past_index]) if len(node.input) > past_index and node.input[past_index] else None
    if not (_known(x) and _known(weight) and _known(out)) or len(x) != 3 or (past is not None and not _known(past)):
        return None
    batch, seq, width = x  # type: ignore[misc]
    hidden = out[-1]  # type: ignore[index]
    keys = seq + (past[3] if past is not None else 0)  # type: ignore[index]
    return 2 * batch * seq * width * weight[1], 2 * 2 * batch * seq * keys * hidden  # type: ignore[index]


def _qattention_as_attention(model: Any) -> set[str]:
    """Rewrite QAttention nodes as Attention in place (same output shapes; ORT's symbolic inference knows only
    the latter); returns their names."""
    from onnx import helper

    renamed = set()
    for i, node in enumerate(model.graph.node):
        if node.op_type == "QAttention":
            inputs = list(node.input[:3]) + ["", node.input[8] if len(node.input) > 8 else ""]
            while inputs and not inputs[-1]:
                inputs.pop()
            heads = next(a.i for a in node.attribute if a.name == "num_heads")
            renamed.add(node.name)
            model.graph.node[i].CopyFrom(helper.make_node("Attention", inputs, list(node.output), name=node.name,
                                                          domain="com.microsoft", num_heads=heads))
    return renamed


def _detach_external(model: Any) -> None:
    """Turn initializers whose data lives in an external file into typed graph inputs.

    Shape inference then knows their shapes without reading gigabytes of weights (and without the
    model's folder, which ORT's symbolic inference would need to resolve the data file).
    """
    from onnx import TensorProto, helper

    for init in list(model.graph.initializer):
        if init.data_location == TensorProto.EXTERNAL:
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            model.graph.initializer.remove(init)


class _Graph:
    def __init__(self, model: Any, initializers: set[str]) -> None:
        self.producer = {out: node for node in model.graph.node for out in node.output}
        self.initializers = initializers

    def origin(self, name: str) -> tuple[str, bool]:
        """(what feeds ``name`` after skipping pass-through ops, whether a DequantizeLinear was crossed)."""
        crossed_dq = False
        for _ in range(8):
            node = self.producer.get(name)
            if node is None or node.op_type not in _PASS_THROUGH:
                return ("initializer" if name in self.initializers or (node is not None and node.op_type == "Constant")
                        else "activation"), crossed_dq
            crossed_dq = crossed_dq or node.op_type == "DequantizeLinear"
            name = node.input[0]
        return "activation", crossed_dq


def _classify(node: Any, graph: _Graph, elem: dict[str, int]) -> tuple[str, str]:
    a_idx, b_idx = _OPERANDS.get(node.op_type, (0, 1))
    a_kind, a_dq = graph.origin(node.input[a_idx])
    b_kind, b_dq = graph.origin(node.input[b_idx])
    if node.op_type in _CONV_OPS:
        kind = "conv"
    else:
        kind = "attention" if a_kind == "activation" and b_kind == "activation" else "linear"
    if node.op_type in _INT8_OPS or (a_dq and b_dq):
        precision = "int8"
    else:
        precision = "fp16" if elem.get(node.input[a_idx]) == 10 else "fp32"  # 10 = TensorProto.FLOAT16
    return kind, precision


def count_flops(path: str | os.PathLike[str], *, batch: int = 1) -> dict[str, Any]:
    """FLOPs of one ONNX file at ``batch``: totals in GFLOPs, split by kind and by execution precision.

    Returns ``total_gflops``, ``reference_gflops`` (linear + conv), ``by_kind`` / ``by_precision`` /
    ``by_op`` GFLOPs, ``int8_fraction`` (share of counted FLOPs in INT8 kernels), ``float_linear_nodes``
    (weight matmuls that stayed float in an INT8 model, with GFLOPs), ``unresolved`` (nodes whose
    shapes could not be inferred) and ``shape_inference``.
    """
    if batch < 1:
        raise ConfigError(f"count_flops: batch must be >= 1, got {batch}")
    onnx = require("onnx", extra="export", purpose="counting FLOPs from an ONNX graph")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"count_flops: {path} does not exist")
    model = onnx.load(os.fspath(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    _fix_batch(model, batch)
    _detach_external(model)
    quantized_attention = _qattention_as_attention(model)  # the model was loaded for this count only
    inferred, method = _infer(model)
    shapes, elem = _shape_table(inferred)
    graph = _Graph(inferred, weights)
    by_kind: dict[str, float] = {}
    by_precision: dict[str, float] = {}
    by_op: dict[str, float] = {}
    float_linear: list[dict[str, Any]] = []
    unresolved: list[str] = []
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in _COUNTED:
            continue
        if node.op_type in _ATTENTION_OPS:
            op_type = "QAttention" if node.name in quantized_attention else node.op_type
            parts = _attention_flops(node, shapes)
            if parts is None:
                unresolved.append(node.name or node.op_type)
                continue
            precision = "int8" if op_type == "QAttention" else "fp32"
            for kind, prec, flops in (("linear", precision, parts[0]), ("attention", "fp32", parts[1])):
                total += flops
                by_kind[kind] = by_kind.get(kind, 0.0) + flops
                by_precision[prec] = by_precision.get(prec, 0.0) + flops
                by_op[op_type] = by_op.get(op_type, 0.0) + flops
            if precision != "int8":
                float_linear.append({"node": node.name, "op": op_type, "gflops": parts[0] / 1e9})
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            unresolved.append(node.name or node.op_type)
            continue
        kind, precision = _classify(node, graph, elem)
        total += flops
        by_kind[kind] = by_kind.get(kind, 0.0) + flops
        by_precision[precision] = by_precision.get(precision, 0.0) + flops
        by_op[node.op_type] = by_op.get(node.op_type, 0.0) + flops
        if kind != "attention" and precision != "int8":
            float_linear.append({"node": node.name, "op": node.op_type, "gflops": flops / 1e9})
    if unresolved:
        logger.warning("%s: could not size %d node(s) (%s...): FLOPs are a lower bound", path.name, len(unresolved),
                       ", ".join(unresolved[:3]))
    giga = lambda d: {k: v / 1e9 for k, v in sorted(d.items())}  # noqa: E731
    return {
        "file": path.name,
        "batch": batch,
        "total_gflops": total / 1e9,
        "reference_gflops": (by_kind.get("linear", 0.0) + by_kind.get("conv", 0.0)) / 1e9,
        "by_kind": giga(by_kind),
        "by_precision": giga(by_precision),
        "by_op": giga(by_op),
        "int8_fraction": (by_precision.get("int8", 0.0) / total) if total else 0.0,
        "float_linear_nodes": float_linear,
        "unresolved": unresolved,
        "shape_inference": method,
    }


def check_against_reference(counted: dict[str, float], reference: dict[str, float] | None = None,
                            tolerance: float = 0.03) -> dict[str, dict[str, Any]]:
    """Compare per-tower ``reference_gflops`` with imagebind.md (huge geometry): relative error, ok flag."""
    reference = REFERENCE_GFLOPS_HUGE if reference is None else reference
    out = {}
    for tower, value in counted.items():
        if tower not in reference:
            continue
        rel = (value - reference[tower]) / reference[tower]
        out[tower] = {"counted": round(value, 3), "reference": reference[tower], "rel_error": round(rel, 4),
                      "ok": abs(rel) <= tolerance}
    return out


def tower_flops(bundle_dir: str | os.PathLike[str], modalities: Iterable[str] | None = None) -> dict[str, Any]:
    """``count_flops`` (batch 1) of every artifact of the bundle's towers: ``{tower: {form: record}}``."""
    from ..bundle.manifest import load_manifest

    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    wanted = set(modalities) if modalities is not None else None
    out: dict[str, Any] = {}
    for name, tower in manifest.towers.items():
        if wanted is not None and name not in wanted:
            continue
        out[name] = {art.form: count_flops(bundle_dir / art.file) for art in tower.artifacts}
    return out
