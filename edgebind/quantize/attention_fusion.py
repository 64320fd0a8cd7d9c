"""Fuse each exported self-attention into ONNX Runtime's ``com.microsoft.Attention`` (CPU form only).

Why: on the CPU the exported attention is ~20 small ops per block (Slice of the packed QKV,
Reshape/Transpose per head, the appended bias_k/bias_v Concat, Softmax, two batched MatMuls). On
imagebind_huge depth with dynamic INT8 they took a third of the run (Transpose 1.9 ms, Slice 1.2,
Concat 0.8, Softmax 1.0, float MatMul 4.4 of 30.6 ms kernel time). ORT's fused Attention kernel does
the in-projection, head split, scaled softmax and output merge in one node, and
``quantize_dynamic`` turns it into ``QAttention`` (INT8 in-projection).

The checkpoint's ``bias_k``/``bias_v`` (one learned key/value position appended after the
in-projection; audio/depth/thermal/IMU) map onto the op's ``past`` input: a length-1 past
key/value, expanded to the batch. Softmax attention does not depend on where that position sits
among the keys, so prepending it (as ``past`` does) equals appending it. The text tower's additive
causal mask maps onto ``unidirectional=1``.

Contrib ops are ORT-only: this runs on the ``int8-dynamic`` form, never on the portable FP32/FP16
or Q/DQ (TensorRT) files. A block is fused only when its whole pattern checks out (packed
in-projection ``[D, 3D]``, q-side scale, optional bias_k/bias_v of ``[1, 1, D]``, optional causal
mask, head merge into an out-projection ``[D, D]``); anything else is left as it was and counted in
the report's ``skipped`` with the reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._onnxfile import onnx_module

logger = logging.getLogger(__name__)

# Ops a tensor may pass through between the in-projection and the attention matmuls: only the head
# split/merge and the scale. Any other op (a norm, an activation) means a pattern we do not know.
_PATH_OPS = {"Add", "Slice", "Split", "Gather", "Mul", "Div", "Reshape", "Transpose", "Concat", "Expand", "Squeeze",
             "Unsqueeze", "Identity"}
_DATA_INPUT_ONLY = {"Reshape", "Slice", "Expand", "Unsqueeze", "Squeeze", "Gather", "Split", "Identity"}
_MAX_PATH = 16


@dataclasses.dataclass
class FusionReport:
    fused: int = 0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # softmax node -> why not
    with_past: int = 0
    causal: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Graph:
    """Producer/consumer/constant lookups over one ONNX graph."""

    def __init__(self, model: Any, base_dir: Path | None):
        self.graph = model.graph
        self.base_dir = base_dir
        self._values: dict[str, np.ndarray | None] = {}
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer, a Constant or an Identity of one (read once)."""
        if name not in self._values:
            self._values[name] = self._read_const(name)
        return self._values[name]

    def _read_const(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        seen = 0
        while seen < 8:
            if name in self.inits:
                return numpy_helper.to_array(self.inits[name], base_dir=str(self.base_dir or ""))
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Identity":
                name, seen = node.input[0], seen + 1
                continue
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        return numpy_helper.to_array(attr.t)
                    if attr.name == "value_float":
                        return np.array(attr.f, np.float32)
                    if attr.name == "value_floats":
                        return np.array(list(attr.floats), np.float32)
            return None
        return None

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        if name in self.inits:
            return tuple(self.inits[name].dims)
        value = self.const(name)
        return None if value is None else tuple(value.shape)

    def data_inputs(self, node: Any) -> list[str]:
        names = [node.input[0]] if node.op_type in _DATA_INPUT_ONLY else list(node.input)
        return [n for n in names if n and self.const(n) is None]

    def only_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None


@dataclasses.dataclass
class _Block:
    x: str
    weight: str
    bias_name: str | None
    out: str                 # the head-merged attention output (input A of the out-projection)
    scale: float
    causal: bool
    bias_k: np.ndarray | None
    bias_v: np.ndarray | None
    dim: int
    inproj_name: str


def _walk_to_inproj(g: _Graph, start: str) -> tuple[Any | None, list[Any], list[np.ndarray]]:
    """From ``start`` up to the in-projection MatMul; returns it, the nodes passed and ``[1,1,D]`` constants met."""
    path: list[Any] = []
    consts: list[np.ndarray] = []
    frontier = [start]
    found = None
    while frontier and len(path) <= _MAX_PATH:
        name = frontier.pop()
        node = g.producer.get(name)
        if node is None:
            return None, path, consts
        if node.op_type == "MatMul":
            if found is not None and found is not node:
                return None, path, consts
            found = node
            continue
        if node.op_type not in _PATH_OPS:
            return None, path, consts
        path.append(node)
        for inp in node.input:
            value = g.const(inp) if inp else None
            if value is not None and value.ndim == 3 and value.shape[:2] == (1, 1):
                consts.append(value)
        frontier.extend(g.data_inputs(node))
    return found, path, consts


def _scale_of(g: _Graph, node: Any) -> np.ndarray | None:
    """The float constant a Mul/Div node applies, else None."""
    if node.op_type not in ("Mul", "Div"):
        return None
    return next((v for v in map(g.const, node.input) if v is not None and v.dtype.kind == "f"), None)


def _match(g: _Graph, softmax: Any, num_heads: int) -> _Block | str:
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return f"softmax axis {axis}"
    pv = g.only_consumer(softmax.output[0])
    if pv is None or pv.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
        return "softmax output is not the left operand of one MatMul"
    scores = g.producer.get(softmax.input[0])
    causal = False
    if scores is not None and scores.op_type == "Add":
        mask = next((v for v in map(g.const, scores.input) if v is not None), None)
        qk = next((g.producer.get(i) for i in scores.input if g.const(i) is None), None)
        if mask is None or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            return "attention mask is not a constant square matrix"
        causal_mask = np.triu(np.ones(mask.shape, bool), 1)
        if not (np.all(mask[~causal_mask] == 0) and np.all(mask[causal_mask] < -1e4)):
            return "attention mask is not causal"
        causal = True
    else:
        qk = scores
    if qk is None or qk.op_type != "MatMul":
        return "scores are not a MatMul"
    found = [_walk_to_inproj(g, name) for name in (qk.input[0], qk.input[1], pv.input[1])]
    inprojs = {id(f[0]) for f in found}
    inproj = found[0][0]
    if inproj is None or len(inprojs) != 1:
        return "q, k and v do not come from one in-projection MatMul"
    wshape = g.const_shape(inproj.input[1])
    if wshape is None or len(wshape) != 2 or wshape[1] != 3 * wshape[0]:
        return f"in-projection weight shape {wshape}, expected [D, 3D]"
    dim = wshape[0]
    if dim % num_heads:
        return f"width {dim} is not divisible by {num_heads} heads"
    head_dim = dim // num_heads
    # The bias Add right after the in-projection is part of every path; take its constant.
    bias_name = None
    after = g.only_consumer(inproj.output[0])
    if after is not None and after.op_type == "Add":
        bias_name = next((i for i in after.input if (v := g.const(i)) is not None and v.shape == (3 * dim,)), None)
    q_scaling = [n for n in found[0][1] if _scale_of(g, n) is not None]
    if len(q_scaling) != 1 or q_scaling[0].op_type != "Mul" or _scale_of(g, q_scaling[0]).size != 1:
        return "no single q-side scale Mul"
    if any(_scale_of(g, n) is not None for f in found[1:] for n in f[1]):
        return "k or v is scaled"
    bias_k = next(iter(found[1][2]), None)
    bias_v = next(iter(found[2][2]), None)
    if (bias_k is None) != (bias_v is None):
        return "bias_k without bias_v (or the reverse)"
    if bias_k is not None and (bias_k.shape != (1, 1, dim) or bias_v.shape != (1, 1, dim)):
        return f"bias_k/bias_v shapes {bias_k.shape}/{bias_v.shape}, expected (1, 1, {dim})"
    if bias_k is not None and causal:
        return "bias_k/bias_v with a causal mask"
    # Head merge: PV -> Transpose -> Reshape -> out-projection MatMul.
    transpose = g.only_consumer(pv.output[0])
    reshape = g.only_consumer(transpose.output[0]) if transpose is not None else None
    if transpose is None or transpose.op_type != "Transpose" or reshape is None or reshape.op_type != "Reshape":
        return "attention output is not merged by Transpose + Reshape"
    users = g.consumers.get(reshape.output[0], [])
    if not users or any(u.op_type != "MatMul" or u.input[0] != reshape.output[0] for u in users):
        return "merged heads do not feed the out-projection"
    if g.const_shape(users[0].input[1]) != (dim, dim):
        return "out-projection weight is not [D, D]"
    return _Block(x=inproj.input[0], weight=inproj.input[1], bias_name=bias_name, out=reshape.output[0],
                  scale=float(_scale_of(g, q_scaling[0])), causal=causal, bias_k=bias_k, bias_v=bias_v, dim=dim,
                  inproj_name=inproj.name)


def _remove_dead(graph: Any) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    unused = [t for t in graph.initializer if t.name not in needed]
    for t in unused:
        graph.initializer.remove(t)


def fuse_attention(model: Any, num_heads: int, *, base_dir: str | Path | None = None,
                   keep_float: frozenset[str] | set[str] = frozenset()) -> FusionReport:
    """Rewrite ``model`` in place; ``keep_float``: in-projection MatMul names whose block must stay as it is
    (the INT8 fallback's float nodes). ``base_dir``: where the model's external data lives."""
    onnx_module()  # a clear error when the export extra is missing
    from onnx import helper, numpy_helper

    if num_heads < 1:
        raise ValueError(f"num_heads: expected >= 1, got {num_heads}")
    g = _Graph(model, Path(base_dir) if base_dir else None)
    report = FusionReport()
    blocks: list[tuple[Any, _Block]] = []
    for node in list(model.graph.node):
        if node.op_type != "Softmax":
            continue
        found = _match(g, node, num_heads)
        if isinstance(found, str):
            report.skipped[node.name or node.output[0]] = found
        elif found.inproj_name in keep_float:
            report.skipped[node.name or node.output[0]] = "in-projection kept in float by the INT8 fallback"
        else:
            blocks.append((node, found))
    if not blocks:
        return report
    new_nodes: dict[str, list[Any]] = {}  # output name of the old merge Reshape -> replacement nodes
    for index, (softmax, block) in enumerate(blocks):
        prefix = f"edgebind_attention_{index}"
        head_dim = block.dim // num_heads
        bias_name = block.bias_name
        if bias_name is None:
            bias_name = f"{prefix}_zero_bias"
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(3 * block.dim, np.float32), bias_name))
        inputs = [block.x, block.weight, bias_name]
        nodes = []
        outputs = [block.out]
        if block.bias_k is not None:
            past = np.stack([block.bias_k.reshape(1, num_heads, 1, head_dim),
                             block.bias_v.reshape(1, num_heads, 1, head_dim)]).astype(np.float32)
            model.graph.initializer.extend([
                numpy_helper.from_array(past, f"{prefix}_bias_kv"),
                numpy_helper.from_array(np.array([2], np.int64), f"{prefix}_two"),
                numpy_helper.from_array(np.array([num_heads, 1, head_dim], np.int64), f"{prefix}_tail")])
            nodes += [
                helper.make_node("Shape", [block.x], [f"{prefix}_batch"], name=f"{prefix}_batch", start=0, end=1),
                helper.make_node("Concat", [f"{prefix}_two", f"{prefix}_batch", f"{prefix}_tail"],
                                 [f"{prefix}_past_shape"], name=f"{prefix}_past_shape", axis=0),
                helper.make_node("Expand", [f"{prefix}_bias_kv", f"{prefix}_past_shape"], [f"{prefix}_past"],
                                 name=f"{prefix}_past")]
            inputs += ["", f"{prefix}_past"]
            outputs.append(f"{prefix}_present")
            report.with_past += 1
        attrs: dict[str, Any] = {"num_heads": num_heads}
        if block.causal:
            attrs["unidirectional"] = 1
            report.causal += 1
        if abs(block.scale - head_dim ** -0.5) > 1e-6 * head_dim ** -0.5:
            attrs["scale"] = block.scale
        nodes.append(helper.make_node("Attention", inputs, outputs, name=f"{prefix}", domain="com.microsoft", **attrs))
        new_nodes[block.out] = nodes
        report.fused += 1
    # Drop the old producer of each merged output, put the fused nodes where it was (keeps the order topological).
    rebuilt = []
    for node in model.graph.node:
        replaced = next((o for o in node.output if o in new_nodes), None)
        if replaced is not None:
            rebuilt.extend(new_nodes[replaced])
        else:
            rebuilt.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)
    _remove_dead(model.graph)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    logger.info("attention fusion: %d blocks fused (%d with bias_k/bias_v, %d causal), %d left as they were",
                report.fused, report.with_past, report.causal, len(report.skipped))
    return report


@contextlib.contextmanager
def fused_copy(src: str | os.PathLike[str], num_heads: int,
               keep_float: frozenset[str] | set[str] = frozenset()) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield ``(path, report)``: ``src`` with its attention fused, as a hidden file beside ``src`` (so
    relative external-data references stay valid; the weights are not copied), removed afterwards.
    With nothing to fuse, ``path`` is ``src`` itself."""
    from ._onnxfile import load_model

    src = Path(src)
    model = load_model(src, with_data=False)
    report = fuse_attention(model, num_heads, base_dir=src.parent, keep_float=keep_float)
    if not report.fused:
        yield src, report.to_dict()
        return
    tmp = src.parent / f".{src.stem}.attention-{uuid.uuid4().hex[:8]}.onnx"
    try:
        onnx_module().save_model(model, os.fspath(tmp))
        del model
        yield tmp, report.to_dict()
    finally:
        tmp.unlink(missing_ok=True)
