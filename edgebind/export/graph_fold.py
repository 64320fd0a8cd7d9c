"""Fold weight-only computations of a traced graph into initializers.

The still-image vision stem computes its Conv2d weight as ``ReduceSum`` of the checkpoint's Conv3d weight over time.
The TorchScript exporter leaves that ReduceSum in the graph (its constant folding skips parameters), so every
downstream tool sees a computed weight: FP16 conversion keeps the reduction in FP32 and then feeds an FP32 weight to
an FP16 Conv (a model ONNX Runtime refuses), INT8 quantizers cannot quantize a weight that is not an initializer, and
TensorRT would recompute it per build. Folding it once at export makes the weight a plain initializer.

Only an allow-list of ops is folded: folding e.g. ``Identity`` of a shared weight would duplicate gigabytes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .._lazy import require

logger = logging.getLogger(__name__)

FOLDABLE_OPS = ("ReduceSum",)


def fold_weight_only_nodes(proto: Any, ops: tuple[str, ...] = FOLDABLE_OPS) -> list[str]:
    """Replace nodes of ``ops`` whose inputs are all initializers by initializers holding their outputs.

    Returns the names of the folded nodes. The graph's observable outputs are unchanged (the node is evaluated with
    ONNX's reference implementation on the stored weights).
    """
    onnx = require("onnx", extra="export", purpose="ONNX export")
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    # Small constants (such as ReduceSum's axes) arrive as Constant nodes rather than initializers.
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            initializers.setdefault(node.output[0], node.attribute[0].t)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    folded: list[str] = []
    for node in list(graph.node):
        if node.op_type not in ops or node.domain not in ("", "ai.onnx"):
            continue
        inputs = [name for name in node.input if name]
        if not inputs or not all(name in initializers for name in inputs):
            continue
        values = [numpy_helper.to_array(initializers[name]) for name in inputs]
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "fold",
                [onnx.helper.make_tensor_value_info(n, numpy_helper.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                 for n, v in zip(inputs, values)],
                [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
            ),
            opset_imports=[onnx.helper.make_opsetid("", opset)],
        )
        outputs = ReferenceEvaluator(single).run(None, dict(zip(inputs, values)))
        graph.node.remove(node)
        for name, value in zip(node.output, outputs):
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        folded.append(node.name or node.output[0])
    if folded:
        _drop_unused_initializers(graph)
        logger.debug("folded weight-only nodes: %s", folded)
    return folded


def _drop_unused_initializers(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    dead = [n for n in graph.node if n.op_type == "Constant" and not set(n.output) & used]
    for node in dead:
        graph.node.remove(node)
