"""Per-node quantization sensitivity of a Q/DQ model: local signal-to-quantization-noise ratio (SQNR).

For each quantized node, every Q/DQ'd input contributes its own noise: an activation X through
Q->DQ (measured on real feeds: ``|X|^2`` against ``|X - DQ(Q(X))|^2``) and a weight W against its
dequantized INT8 copy. The node's score is the SQNR of the summed relative noise powers, in dB;
the lowest scores are the nodes to return to float first.

This is the measure ORT's ``qdq_loss_debug`` computes (``compute_signal_to_quantization_noice_ratio``
on pre-/post-QDQ tensors and on weights), done here as running sums over the feeds and for the Q/DQ
tensors only, so the memory stays flat for ViT-H sized towers instead of holding every activation
of every feed.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Iterable

import numpy as np
import onnxruntime as ort

from .._ort_options import session_options
from ._onnxfile import load_model, onnx_module, uses_external_data
from .reader import model_input_names, normalize_feeds

logger = logging.getLogger(__name__)

_TINY = 1e-30


def _sqnr_db(signal: float, noise: float) -> float:
    return 10.0 * math.log10(max(signal, _TINY) / max(noise, _TINY))


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    q = q.astype(np.float64)
    scale = scale.astype(np.float64)
    zp = np.zeros_like(scale) if zero_point is None else zero_point.astype(np.float64)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis if axis >= 0 else q.ndim + axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def _qdq_inputs(qdq_model: Any, op_types: set[str]) -> dict[str, list[tuple[int, Any]]]:
    """Quantized nodes -> [(input index, DequantizeLinear node feeding it)]."""
    producers = {out: node for node in qdq_model.graph.node for out in node.output}
    out: dict[str, list[tuple[int, Any]]] = {}
    for node in qdq_model.graph.node:
        if node.op_type not in op_types:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                out.setdefault(node.name, []).append((i, dq))
    return out


def weight_sqnr(float_model: Any, qdq_model: Any, op_types: set[str]) -> dict[tuple[str, int], float]:
    """SQNR (dB) of each quantized weight, keyed by (node name, input index)."""
    onnx = onnx_module()
    qdq_inits = {init.name: init for init in qdq_model.graph.initializer}
    float_inits = {init.name: init for init in float_model.graph.initializer}
    float_nodes = {node.name: node for node in float_model.graph.node}
    result: dict[tuple[str, int], float] = {}
    for node_name, inputs in _qdq_inputs(qdq_model, op_types).items():
        float_node = float_nodes.get(node_name)
        if float_node is None:
            continue
        for index, dq in inputs:
            if dq.input[0] not in qdq_inits or index >= len(float_node.input):
                continue  # an activation, handled by activation_noise
            weight = float_inits.get(float_node.input[index])
            if weight is None:
                continue
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            zp = onnx.numpy_helper.to_array(qdq_inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in qdq_inits else None
            deq = _dequantize(onnx.numpy_helper.to_array(qdq_inits[dq.input[0]]),
                              onnx.numpy_helper.to_array(qdq_inits[dq.input[1]]), zp, axis)
            w = onnx.numpy_helper.to_array(weight).astype(np.float64)
            if deq.shape != w.shape:
                continue
            result[(node_name, index)] = _sqnr_db(float(np.sum(w * w)), float(np.sum((w - deq) ** 2)))
    return result


def activation_noise(qdq_path: str | os.PathLike[str], feeds: Iterable[Any], op_types: set[str],
                     threads: int = 2) -> dict[tuple[str, int], float]:
    """SQNR (dB) of each quantized activation input on ``feeds``, keyed by (node name, input index)."""
    onnx = onnx_module()
    graph_only = load_model(qdq_path, with_data=False)
    producers = {out: node for node in graph_only.graph.node for out in node.output}
    qdq_inits = {init.name for init in graph_only.graph.initializer}
    pairs: dict[tuple[str, int], tuple[str, str]] = {}
    for node_name, inputs in _qdq_inputs(graph_only, op_types).items():
        for index, dq in inputs:
            if dq.input[0] in qdq_inits:
                continue  # a weight
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            pairs[(node_name, index)] = (q.input[0], dq.output[0])
    tensors = sorted({t for pair in pairs.values() for t in pair})
    if not tensors:
        return {}
    existing = {o.name for o in graph_only.graph.output}
    for name in tensors:
        if name not in existing:
            graph_only.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    if uses_external_data(graph_only):
        # Keep the relative data location valid: write the augmented graph beside the model.
        aug_path = os.path.join(os.path.dirname(os.fspath(qdq_path)) or ".", f".sens-{os.getpid()}-{os.path.basename(qdq_path)}")
        onnx.save_model(graph_only, aug_path)
        model_arg: Any = aug_path
    else:
        aug_path, model_arg = None, graph_only.SerializeToString()
    # Optimisation would fold the Q/DQ pairs into integer kernels and hide the tensors we read.
    options = session_options(ort, threads=threads, level="disable")
    try:
        session = ort.InferenceSession(model_arg, options, providers=["CPUExecutionProvider"])
        signal = dict.fromkeys(pairs, 0.0)
        noise = dict.fromkeys(pairs, 0.0)
        feed_list = normalize_feeds(feeds, model_input_names(qdq_path), what="sensitivity feeds")
        for feed in feed_list:
            values = dict(zip(tensors, session.run(tensors, feed)))
            for key, (pre, post) in pairs.items():
                x = values[pre].astype(np.float64)
                signal[key] += float(np.sum(x * x))
                noise[key] += float(np.sum((x - values[post]) ** 2))
    finally:
        if aug_path is not None and os.path.exists(aug_path):
            os.unlink(aug_path)
    return {key: _sqnr_db(signal[key], noise[key]) for key in pairs}


def rank_nodes(float_path: str | os.PathLike[str], qdq_path: str | os.PathLike[str], feeds: Iterable[Any],
               op_types: Iterable[str], threads: int = 2) -> list[dict[str, Any]]:
    """Quantized nodes of ``qdq_path``, most sensitive (lowest combined SQNR) first.

    Each entry: ``node``, ``op_type``, ``sqnr_db`` (combined), ``activation_sqnr_db`` and
    ``weight_sqnr_db`` (worst of each kind, or None).
    """
    wanted = set(op_types)
    qdq_model = load_model(qdq_path)
    weights = weight_sqnr(load_model(float_path), qdq_model, wanted)
    activations = activation_noise(qdq_path, feeds, wanted, threads)
    op_of = {node.name: node.op_type for node in qdq_model.graph.node}
    per_node: dict[str, dict[str, list[float]]] = {}
    for (node, _), value in weights.items():
        per_node.setdefault(node, {"w": [], "a": []})["w"].append(value)
    for (node, _), value in activations.items():
        per_node.setdefault(node, {"w": [], "a": []})["a"].append(value)
    ranking = []
    for node, parts in per_node.items():
        # Relative noise powers of the operands add (to first order) in the product.
        relative_noise = sum(10.0 ** (-v / 10.0) for v in parts["w"] + parts["a"])
        ranking.append({
            "node": node,
            "op_type": op_of.get(node, "?"),
            "sqnr_db": round(-10.0 * math.log10(max(relative_noise, _TINY)), 3),
            "activation_sqnr_db": round(min(parts["a"]), 3) if parts["a"] else None,
            "weight_sqnr_db": round(min(parts["w"]), 3) if parts["w"] else None,
        })
    ranking.sort(key=lambda entry: entry["sqnr_db"])
    logger.info("sensitivity: ranked %d quantized nodes; worst %s", len(ranking), ranking[:3])
    return ranking
