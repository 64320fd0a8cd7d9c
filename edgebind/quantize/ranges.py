"""Observed value ranges of every intermediate float tensor, used to keep overflow-prone nodes in FP32."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnxruntime as ort

from .._ort_options import session_options
from ._onnxfile import check_source, load_model, onnx_module, uses_external_data
from .reader import model_input_names, normalize_feeds

logger = logging.getLogger(__name__)


def float_node_outputs(model: Any) -> list[str]:
    """Names of node outputs whose inferred type is float32 (the tensors an FP16 cast would touch)."""
    onnx = onnx_module()
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.output})
    names = []
    for node in model.graph.node:
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT:
                names.append(out)
    return names


def collect_tensor_ranges(model_path: str | os.PathLike[str], feeds: Iterable[Any], threads: int = 2) -> dict[str, float]:
    """Absolute maximum of every float node output over ``feeds`` (arrays or feed dicts).

    Runs the FP32 model with all those tensors added as graph outputs (graph optimisation off, so
    the names are the file's names). Models with external data are augmented beside the source so
    the relative data location still resolves; the temp file is removed afterwards.
    """
    src = check_source(model_path)
    feed_list = normalize_feeds(feeds, model_input_names(src), what="range feeds")
    graph_only = load_model(src, with_data=False)
    onnx = onnx_module()
    wanted = float_node_outputs(graph_only)
    existing = {o.name for o in graph_only.graph.output}
    for name in wanted:
        if name not in existing:
            graph_only.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = session_options(ort, threads=threads, level="disable")
    temp_path: Path | None = None
    try:
        if uses_external_data(graph_only):
            temp_path = src.parent / f".{src.stem}.ranges-{uuid.uuid4().hex[:8]}.onnx"
            onnx.save_model(graph_only, os.fspath(temp_path))
            session = ort.InferenceSession(os.fspath(temp_path), options, providers=["CPUExecutionProvider"])
        else:
            session = ort.InferenceSession(graph_only.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        ranges: dict[str, float] = {}
        for feed in feed_list:
            for name, value in zip(names, session.run(names, feed)):
                value = np.asarray(value)
                if value.dtype.kind != "f" or value.size == 0:
                    continue
                finite = np.abs(value[np.isfinite(value)])
                peak = float(finite.max()) if finite.size else float("inf")
                ranges[name] = max(ranges.get(name, 0.0), peak)
    finally:
        if temp_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
    logger.info("collected ranges of %d tensors over %d feeds", len(ranges), len(feed_list))
    return ranges
