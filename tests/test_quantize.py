"""edgebind.quantize on small exported transformers: FP16, INT8 Q/DQ, dynamic INT8, fallback, records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx (the 'export' extra) is needed to build test models")
torch = pytest.importorskip("torch", reason="torch (the 'export' extra) is needed to build test models")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from edgebind.errors import CalibrationError, ConfigError, ExportError  # noqa: E402
from edgebind.quantize import (  # noqa: E402
    FeedReader,
    Fp16Config,
    QuantConfig,
    collect_tensor_ranges,
    compare_embeddings,
    compare_latency,
    convert_fp16,
    cpu_flags,
    fp16_emulation_model,
    fp16_fidelity,
    int8_backend_plan,
    quantize_dynamic_cpu,
    quantize_qdq,
    quantize_with_fallback,
    rank_nodes,
    run_onnx,
)

# --------------------------------------------------------------------------- test models


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """Pre-LN ViT: Conv patch stem, CLS token, 2 blocks (matmul/softmax attention, exact GELU), L2-normalised CLS."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, out: int = 16, image: int = 32, patch: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(1, dim, patch, patch, bias=False)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.head(self.norm(x)[:, 0]), dim=-1)


def inject_outlier_channel(model: TinyViT, block: int, channel: int, factor: float) -> None:
    """Same function, but one channel of a block's fc1 input is ``factor`` times larger (LN gain up, fc1 column down)."""
    b = model.blocks[block]
    with torch.no_grad():
        b.ln2.weight[channel] *= factor
        b.ln2.bias[channel] *= factor
        b.fc1.weight[:, channel] /= factor


class LargeActivations(nn.Module):
    """Patch Linear whose outputs reach ~1e5 (past FP16's 65504), then LayerNorm, pooling, head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 8, bias=False)
        with torch.no_grad():
            self.proj.weight.mul_(6e4)  # weights stay below 65504; sums over 16 inputs do not

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], 16, 16)
        return F.normalize(self.head(self.norm(self.proj(tokens)).mean(dim=1)), dim=-1)


def export(model: nn.Module, path: Path, sample_shape: tuple[int, ...]) -> Path:
    model.eval()
    torch.onnx.export(model, (torch.randn(*sample_shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["embedding"],
                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return path


def images(seed: int, batches: int, batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 1, 32, 32)).astype(np.float32) for _ in range(batches)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    torch.manual_seed(0)
    clean = TinyViT()
    outlier = TinyViT()
    outlier.load_state_dict(clean.state_dict())
    inject_outlier_channel(outlier, block=1, channel=3, factor=100.0)
    torch.manual_seed(1)
    return {
        "root": root,
        "clean": export(clean, root / "clean.onnx", (2, 1, 32, 32)),
        "outlier": export(outlier, root / "outlier.onnx", (2, 1, 32, 32)),
        "large": export(LargeActivations(), root / "large.onnx", (2, 1, 16, 16)),
    }


CALIB = images(seed=10, batches=8, batch=4)
VAL = images(seed=20, batches=4, batch=8)


def node_inputs_from(model, op_type: str) -> dict[str, set[str]]:
    """For every node, the op types producing its inputs."""
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    return {n.name: {producers.get(i, "") for i in n.input} for n in model.graph.node if n.op_type == op_type}


# --------------------------------------------------------------------------- config and fidelity


def test_quant_config_round_trips_and_rejects_bad_values():
    cfg = QuantConfig(method="percentile", nodes_to_exclude=("a", "b"), min_min_cosine=0.95)
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        QuantConfig.from_dict({"methd": "minmax"})
    with pytest.raises(ConfigError, match="method"):
        QuantConfig.from_dict({"method": "kl"})
    with pytest.raises(ConfigError, match="growth"):
        QuantConfig(growth=0.5)
    with pytest.raises(ConfigError, match="op_types"):
        QuantConfig(op_types=())
    with pytest.raises(ConfigError, match="overflow_fraction"):
        Fp16Config(overflow_fraction=0.0)
    assert Fp16Config.from_dict(Fp16Config().to_dict()) == Fp16Config()


def test_compare_embeddings_measures_cosine_and_retrieval():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 4))
    # Rotating every row by a known angle in the plane of two axes gives that cosine exactly.
    theta = 0.1
    rot = np.eye(4)
    rot[:2, :2] = [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
    ref2 = np.zeros((6, 4))
    ref2[:, :2] = ref[:, :2]
    f = compare_embeddings(ref2, ref2 @ rot.T)
    assert f["mean_cosine"] == pytest.approx(math.cos(theta)) and f["min_cosine"] == pytest.approx(math.cos(theta))

    same = compare_embeddings(ref, ref * 3.0)  # cosine ignores scale, max_abs_diff does not
    assert same["mean_cosine"] == pytest.approx(1.0) and same["top1_agreement"] == 1.0
    assert same["max_abs_diff"] == pytest.approx(2 * np.abs(ref).max())

    # Test rows equal to other rows' references: each query's nearest neighbour changes.
    shuffled = compare_embeddings(ref, ref[[1, 0, 3, 2, 5, 4]])
    assert shuffled["top1_agreement"] < 1.0
    gallery = compare_embeddings(ref, ref, gallery=rng.standard_normal((3, 4)))
    assert gallery["top1_agreement"] == 1.0
    with pytest.raises(ConfigError, match="equal shapes"):
        compare_embeddings(ref, ref[:3])
    with pytest.raises(ConfigError, match="NaN"):
        compare_embeddings(ref, np.full_like(ref, np.nan))


def test_feed_reader_maps_arrays_and_checks_feeds(models):
    reader = FeedReader(CALIB[:2], model_path=models["clean"])
    first = reader.get_next()
    assert list(first) == ["input"] and first["input"].shape == (4, 1, 32, 32)
    assert reader.get_next() is not None and reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None
    with pytest.raises(CalibrationError, match="lacks model input"):
        FeedReader([{"image": CALIB[0]}], model_path=models["clean"])
    with pytest.raises(CalibrationError, match="no data"):
        FeedReader([], model_path=models["clean"])


def test_collect_tensor_ranges_matches_the_graph_output(models):
    ranges = collect_tensor_ranges(models["clean"], VAL)
    expected = float(np.abs(run_onnx(models["clean"], VAL)).max())
    assert ranges["embedding"] == pytest.approx(expected, rel=1e-6)
    assert len(ranges) > 50  # every float intermediate, not just the output


# --------------------------------------------------------------------------- FP16


def test_fp16_keeps_normalisations_fp32_and_matches(models, tmp_path):
    dst = tmp_path / "clean_fp16.onnx"
    record = convert_fp16(models["clean"], dst, Fp16Config(), val_feeds=VAL)
    converted = onnx.load(str(dst))
    io_types = {v.type.tensor_type.elem_type for v in list(converted.graph.input) + list(converted.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}
    inits = {i.name: i.data_type for i in converted.graph.initializer}
    ln_nodes = [n for n in converted.graph.node if n.op_type == "LayerNormalization"]
    assert len(ln_nodes) == 5 and all(inits[n.input[1]] == onnx.TensorProto.FLOAT for n in ln_nodes)
    matmul_weights = [inits[n.input[1]] for n in converted.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert matmul_weights and set(matmul_weights) == {onnx.TensorProto.FLOAT16}
    fid = fp16_fidelity(models["clean"], dst, VAL)
    assert fid["mean_cosine"] > 0.9999 and fid["top1_agreement"] == 1.0, fid
    assert record["fidelity"] == pytest.approx(fid)
    assert record["artifact"]["sha256"] and record["kind"] == "onnx-fp16"
    assert {n for n in record["fp32_nodes"]} >= {n.name for n in ln_nodes}
    assert not list(tmp_path.glob(".*tmp*")), "staging folders must not be left behind"

    # With nothing blocked the LayerNorm weights go FP16: the config really decides.
    convert_fp16(models["clean"], tmp_path / "all_fp16.onnx", Fp16Config(fp32_op_types=()))
    all16 = onnx.load(str(tmp_path / "all_fp16.onnx"))
    inits16 = {i.name: i.data_type for i in all16.graph.initializer}
    assert {inits16[n.input[1]] for n in all16.graph.node if n.op_type == "LayerNormalization"} == {onnx.TensorProto.FLOAT16}


def test_fp16_output_stays_fp32_when_the_last_node_is_kept_fp32(models, tmp_path):
    # The final L2-normalisation Div feeds the graph output; keeping it FP32 used to leave an FP16 output.
    dst = tmp_path / "div32.onnx"
    convert_fp16(models["clean"], dst, Fp16Config(fp32_op_types=("Div", "LayerNormalization")))
    assert onnx.load(str(dst)).graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert run_onnx(dst, VAL[:1]).dtype == np.float32
    assert fp16_fidelity(models["clean"], dst, VAL)["mean_cosine"] > 0.9999


def test_fp16_calibration_ranges_keep_overflowing_nodes_fp32(models, tmp_path):
    feeds = [np.random.default_rng(3).standard_normal((4, 1, 16, 16)).astype(np.float32) for _ in range(3)]
    ref = run_onnx(models["large"], feeds)
    convert_fp16(models["large"], tmp_path / "naive.onnx", Fp16Config())
    # ORT's CPU backend runs these FP16 nodes in FP32 and hides the overflow; the rounding twin shows it.
    assert np.isfinite(run_onnx(tmp_path / "naive.onnx", feeds)).all()
    fp16_emulation_model(tmp_path / "naive.onnx", tmp_path / "naive_twin.onnx")
    naive = run_onnx(tmp_path / "naive_twin.onnx", feeds)
    assert not np.isfinite(naive).all(), "the test model must overflow FP16 without ranges"

    ranges = collect_tensor_ranges(models["large"], feeds)
    assert max(ranges.values()) > 65504
    record = convert_fp16(models["large"], tmp_path / "ranged.onnx", Fp16Config(), calibration_ranges=ranges)
    assert any("MatMul" in name for name in record["fp32_nodes_for_range"]), record["fp32_nodes_for_range"]
    fid = fp16_fidelity(models["large"], tmp_path / "ranged.onnx", feeds, ref=ref)
    assert fid["mean_cosine"] > 0.999, fid


def test_fp16_external_data_in_and_out(models, tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = src_dir / "ext.onnx"
    onnx.save_model(onnx.load(str(models["clean"])), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    assert (src_dir / "ext.onnx.data").is_file()
    dst = tmp_path / "out" / "ext_fp16.onnx"
    record = convert_fp16(src, dst, Fp16Config(external_data_threshold_bytes=1000))
    assert record["external_data"] is True
    assert Path(record["artifact"]["external_data"]["path"]) == dst.parent / "ext_fp16.onnx.data"
    fid = compare_embeddings(run_onnx(models["clean"], VAL), run_onnx(dst, VAL))
    assert fid["mean_cosine"] > 0.9999
    # Rewriting the same destination self-contained removes the stale data file.
    convert_fp16(src, dst, Fp16Config())
    assert not (dst.parent / "ext_fp16.onnx.data").exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["ext_fp16.onnx"]


# --------------------------------------------------------------------------- INT8


def test_qdq_is_symmetric_per_channel_and_only_on_gemm_inputs(models, tmp_path):
    dst = tmp_path / "clean_qdq.onnx"
    cache = tmp_path / "calib.json"
    exclude = "/blocks.0/fc2/MatMul"
    record = quantize_qdq(models["clean"], dst, CALIB, QuantConfig(nodes_to_exclude=(exclude,)), calibration_cache=cache)
    model = onnx.load(str(dst))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    consumers = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.op_type)
    dq_consumers = {op for n in qdq if n.op_type == "DequantizeLinear" for op in consumers.get(n.output[0], [])}
    assert dq_consumers == {"MatMul", "Conv"}, dq_consumers  # not the Shape that reads the LN output too
    assert record["float_readers_restored"] >= 2
    # Weight scales are per output channel: one per column of each MatMul weight.
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 2]
    assert weight_dq and all(inits[n.input[1]].size == inits[n.input[0]].shape[1] for n in weight_dq)

    fed_by = node_inputs_from(model, "MatMul")
    assert "DequantizeLinear" not in fed_by[exclude]
    attention = [name for name in fed_by if name.endswith("attn/MatMul") or name.endswith("attn/MatMul_1")]
    assert len(attention) == 4 and all("DequantizeLinear" not in fed_by[n] for n in attention)
    assert set(record["activation_matmuls_kept_float"]) == set(attention)
    assert exclude in record["nodes_kept_float"] and len(record["nodes_quantized"]) == 9
    assert record["zero_points_all_zero"] and cache.is_file()

    fid = compare_embeddings(run_onnx(models["clean"], VAL), run_onnx(dst, VAL))
    assert fid["mean_cosine"] > 0.99, fid

    # A second run from the cache needs no data and reproduces the same scales.
    again = tmp_path / "again.onnx"
    quantize_qdq(models["clean"], again, None, QuantConfig(nodes_to_exclude=(exclude,)), calibration_cache=cache)
    inits2 = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(again)).graph.initializer}
    scales = [k for k in inits if k.endswith("_scale")]
    assert scales and all(np.array_equal(inits[k], inits2[k]) for k in scales)
    with pytest.raises(CalibrationError, match="no calibration data"):
        quantize_qdq(models["clean"], tmp_path / "x.onnx", None, QuantConfig())


def test_dynamic_int8_uses_integer_matmuls_and_keeps_conv_float(models, tmp_path):
    dst = tmp_path / "clean_dyn.onnx"
    record = quantize_dynamic_cpu(models["clean"], dst, QuantConfig(), val_feeds=VAL)
    ops = record["ops"]
    assert ops.get("MatMulInteger", 0) == 9 and "ConvInteger" not in ops and ops.get("Conv") == 1
    assert record["intended_backends"] == ["onnxruntime-cpu"]
    fid = compare_embeddings(run_onnx(models["clean"], VAL), run_onnx(dst, VAL))
    assert fid["mean_cosine"] > 0.99, fid
    assert record["fidelity"] == pytest.approx(fid)


def test_fallback_returns_the_outlier_layer_to_float(models, tmp_path):
    dst = tmp_path / "outlier_int8.onnx"
    record = quantize_with_fallback(models["outlier"], dst, lambda: FeedReader(CALIB, model_path=models["outlier"]),
                                    VAL, QuantConfig(), progress=False)
    rounds = record["fallback"]["rounds"]
    assert not rounds[0]["passed"] and rounds[0]["fidelity"]["mean_cosine"] < 0.99, rounds[0]
    assert record["passed"] and record["fidelity"]["mean_cosine"] >= 0.99
    returned = record["fallback"]["nodes_returned_to_float"]
    assert "/blocks.1/fc1/MatMul" in returned, returned
    assert record["fallback"]["sensitivity_top"][0]["node"] == "/blocks.1/fc1/MatMul"
    # The artifact on disk is the one the record describes.
    again = compare_embeddings(run_onnx(models["outlier"], VAL), run_onnx(dst, VAL))
    assert again["mean_cosine"] == pytest.approx(record["fidelity"]["mean_cosine"], abs=1e-9)
    fed_by = node_inputs_from(onnx.load(str(dst)), "MatMul")
    assert "DequantizeLinear" not in fed_by["/blocks.1/fc1/MatMul"]
    json.dumps(record)  # manifest-ready

    # Dynamic INT8 has the same weakness; the fallback's verdict protects it too.
    plain = quantize_dynamic_cpu(models["outlier"], tmp_path / "dyn.onnx", QuantConfig(), val_feeds=VAL)
    guarded = quantize_dynamic_cpu(models["outlier"], tmp_path / "dyn_guarded.onnx", QuantConfig(),
                                   nodes_to_exclude=returned, val_feeds=VAL)
    assert plain["fidelity"]["mean_cosine"] < 0.99 <= guarded["fidelity"]["mean_cosine"]


def test_fallback_reports_failure_with_the_best_attempt(models, tmp_path):
    dst = tmp_path / "strict.onnx"
    config = QuantConfig(min_mean_cosine=0.9999999, max_rounds=1)
    record = quantize_with_fallback(models["outlier"], dst, CALIB, VAL, config, progress=False)
    assert record["passed"] is False and len(record["fallback"]["rounds"]) == 2
    best = max(r["fidelity"]["mean_cosine"] for r in record["fallback"]["rounds"])
    assert record["fidelity"]["mean_cosine"] == best and dst.is_file()


def test_rank_nodes_puts_the_outlier_input_first(models, tmp_path):
    qdq = tmp_path / "o.onnx"
    quantize_qdq(models["outlier"], qdq, CALIB, QuantConfig())
    ranking = rank_nodes(models["outlier"], qdq, CALIB[:4], ["MatMul", "Gemm", "Conv"])
    assert ranking[0]["node"] == "/blocks.1/fc1/MatMul"
    assert [r["sqnr_db"] for r in ranking] == sorted(r["sqnr_db"] for r in ranking)
    assert len(ranking) == 10


def test_backend_plan_and_latency(models, tmp_path):
    qdq = quantize_qdq(models["clean"], tmp_path / "q.onnx", CALIB, QuantConfig())
    dyn = quantize_dynamic_cpu(models["clean"], tmp_path / "d.onnx", QuantConfig())
    plan = int8_backend_plan(qdq, dyn)
    assert plan["tensorrt"]["artifact"] == qdq["artifact"]["path"]
    assert plan["onnxruntime-cpu"]["form"] == "int8-dynamic"
    latency = compare_latency({"fp32": models["clean"], "int8-qdq": tmp_path / "q.onnx", "int8-dynamic": tmp_path / "d.onnx"},
                              VAL[0][:1], runs=3, warmup=1)
    assert set(latency) == {"fp32", "int8-qdq", "int8-dynamic"} and all(v["min_ms"] > 0 for v in latency.values())
    # The CPU choice follows the measurement when one is given.
    faster_qdq = {"int8-qdq": {"min_ms": 1.0}, "int8-dynamic": {"min_ms": 2.0}, "fp32": {"min_ms": 3.0}}
    assert int8_backend_plan(qdq, dyn, faster_qdq)["onnxruntime-cpu"]["form"] == "int8-qdq"
    assert "avx512_vnni" in cpu_flags()


def test_missing_source_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        convert_fp16(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    with pytest.raises(ExportError, match="does not exist"):
        quantize_dynamic_cpu(tmp_path / "nope.onnx", tmp_path / "out.onnx")
