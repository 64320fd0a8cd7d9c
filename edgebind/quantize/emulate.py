"""Faithful FP16 numerics on a CPU: an FP32 twin of an FP16 model that rounds every FP16 tensor.

ONNX Runtime's CPU backend has no FP16 kernels for most ops (MatMul, Add, Erf, ... on x86); it
runs those nodes in FP32 and drops the FP16 tensors between them, so an FP16 model evaluated
there shows neither FP16 rounding nor FP16 overflow (measured: activations of 1.2e5 came out
finite). The twin built here computes each op in FP32 and rounds its output through an explicit
``Cast(FP16) -> Cast(FP32)`` pair, which ORT keeps: FP16 storage with FP32 arithmetic inside an op,
as TensorRT's FP16 kernels do (GEMMs accumulate in FP32). Weights are the FP16 model's, widened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._onnxfile import load_model, onnx_module, save_model


def _widen_tensor(tensor: Any) -> None:
    onnx = onnx_module()
    if tensor.data_type != onnx.TensorProto.FLOAT16:
        return
    values = onnx.numpy_helper.to_array(tensor).astype(np.float32)
    tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))


def _tensor_types(graph_only: Any) -> dict[str, int]:
    """Element type of every tensor, from shape inference on the graph (weights not needed)."""
    onnx = onnx_module()
    inferred = onnx.shape_inference.infer_shapes(graph_only)
    return {vi.name: vi.type.tensor_type.elem_type
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}


def fp16_emulation_model(fp16_path: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write the FP32 twin of the FP16 model at ``fp16_path`` to ``dst`` (external data when large)."""
    onnx = onnx_module()
    types = _tensor_types(load_model(fp16_path, with_data=False))
    model = load_model(fp16_path)
    fp16 = onnx.TensorProto.FLOAT16
    for init in model.graph.initializer:
        _widen_tensor(init)
    new_nodes = []
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            for t in attr.tensors:
                _widen_tensor(t)
        rounding = []
        for i, out in enumerate(node.output):
            if not out or types.get(out) != fp16:
                continue
            raw = f"{out}__emu_raw"
            node.output[i] = raw
            if node.op_type == "Cast":  # already produces FP16: widen it back
                rounding.append(onnx.helper.make_node("Cast", [raw], [out], name=f"{raw}_to32", to=onnx.TensorProto.FLOAT))
            else:
                rounding.append(onnx.helper.make_node("Cast", [raw], [f"{out}__emu16"], name=f"{raw}_to16", to=fp16))
                rounding.append(onnx.helper.make_node("Cast", [f"{out}__emu16"], [out], name=f"{raw}_to32",
                                                      to=onnx.TensorProto.FLOAT))
        new_nodes.append(node)
        new_nodes.extend(rounding)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    del model.graph.value_info[:]
    save_model(model, dst, external_threshold_bytes=1_800_000_000)
    return Path(dst)
