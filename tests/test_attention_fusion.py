"""Attention fusion for the CPU INT8 form: exact on every tiny tower, conservative on patterns it does not know."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgebind.bundle.manifest import load_manifest
from edgebind.modality import Modality
from edgebind.quantize.attention_fusion import fuse_attention, fused_copy
from edgebind.quantize.int8 import quantize_dynamic_cpu

ALL = [m.value for m in Modality]
BIAS_KV = {"audio", "depth", "thermal", "imu"}


def _run(model_or_path, feed):
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _feed(tower, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    shape = [batch] + [int(d) for d in tower.input.shape[1:]]
    if tower.input.dtype.startswith("int"):
        return {tower.input.name: rng.integers(1, 400, size=shape).astype(np.int64)}
    return {tower.input.name: rng.standard_normal(shape).astype(np.float32)}


def _tower(tiny_bundle, modality):
    manifest = load_manifest(tiny_bundle)
    tower = manifest.tower(modality)
    heads = manifest.model_config[f"{modality}_num_heads"]
    blocks = manifest.model_config[f"{modality}_num_blocks"]
    return tower, tiny_bundle / tower.artifact("fp32", "fp32").file, heads, blocks


def _strengthen_attention_constants(model, dim):
    """Random-init biases are zero and bias_k/bias_v tiny (std 0.02): make them large and distinct so that a
    fusion that mixed up bias_k and bias_v, or dropped the in-projection bias, changes the output."""
    rng = np.random.default_rng(1)
    changed = 0
    for init in model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.shape == (1, 1, dim) or value.shape == (3 * dim,):
            init.CopyFrom(numpy_helper.from_array(rng.standard_normal(value.shape).astype(np.float32), init.name))
            changed += 1
    return changed


@pytest.mark.parametrize("modality", ALL)
def test_fused_graph_equals_the_exported_one(tiny_bundle, modality):
    tower, path, heads, blocks = _tower(tiny_bundle, modality)
    model = onnx.load(str(path))
    dim = load_manifest(tiny_bundle).model_config[f"{modality}_embed_dim"]
    assert _strengthen_attention_constants(model, dim) >= 1
    reference = _run(model, _feed(tower))
    report = fuse_attention(model, heads)
    assert report.fused == blocks and not report.skipped
    assert report.with_past == (blocks if modality in BIAS_KV else 0)
    assert report.causal == (blocks if modality == "text" else 0)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Attention") == blocks and "Softmax" not in ops
    # batch 2: the bias_k/bias_v past is expanded to the batch
    np.testing.assert_allclose(_run(model, _feed(tower)), reference, atol=2e-5)


def test_a_mask_that_is_not_causal_is_left_alone(tiny_bundle):
    tower, path, heads, blocks = _tower(tiny_bundle, "text")
    model = onnx.load(str(path))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    masks = {i for n in model.graph.node if n.op_type == "Add" and any(n.output[0] == s.input[0] for s in softmax)
             for i in n.input}
    changed = 0
    for init in model.graph.initializer:
        if init.name in masks:
            value = numpy_helper.to_array(init).copy()
            value[0, 1] = 0.0  # the first token may now see the second one
            init.CopyFrom(numpy_helper.from_array(value, init.name))
            changed += 1
    assert changed, "the text graph's causal mask was not found as an initializer"
    report = fuse_attention(model, heads)
    assert report.fused == 0 and set(report.skipped.values()) == {"attention mask is not causal"}
    assert [n.op_type for n in model.graph.node].count("Softmax") == blocks


def test_wrong_head_count_and_kept_float_blocks_are_skipped(tiny_bundle):
    _, path, heads, blocks = _tower(tiny_bundle, "depth")
    model = onnx.load(str(path))
    dim = load_manifest(tiny_bundle).model_config["depth_embed_dim"]
    report = fuse_attention(model, dim + 1)
    assert report.fused == 0 and len(report.skipped) == blocks
    assert all("not divisible" in why for why in report.skipped.values())

    first_inproj = next(n.name for n in model.graph.node if n.op_type == "MatMul"
                        and any(t.name == n.input[1] and list(t.dims) == [dim, 3 * dim] for t in model.graph.initializer))
    report = fuse_attention(model, heads, keep_float={first_inproj})
    assert report.fused == blocks - 1
    assert list(report.skipped.values()) == ["in-projection kept in float by the INT8 fallback"]


def test_dynamic_int8_uses_qattention_and_the_temp_copy_is_removed(tiny_bundle, tmp_path):
    tower, path, heads, blocks = _tower(tiny_bundle, "audio")
    record = quantize_dynamic_cpu(path, tmp_path / "audio.int8-dynamic.onnx", num_heads=heads,
                                  val_feeds=[_feed(tower, 1, seed) for seed in range(3)])
    assert record["attention_fusion"]["fused"] == blocks
    assert record["integer_ops"]["QAttention"] == blocks
    assert record["fidelity"]["mean_cosine"] >= 0.99
    assert not [p for p in path.parent.iterdir() if ".attention-" in p.name]

    plain = quantize_dynamic_cpu(path, tmp_path / "plain.onnx")
    assert plain["attention_fusion"] is None and "QAttention" not in plain["integer_ops"]

    with fused_copy(path, heads) as (fused, report):
        assert fused != path and fused.parent == path.parent and report["fused"] == blocks
    assert not fused.exists()
