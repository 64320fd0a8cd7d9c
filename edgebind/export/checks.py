"""Checks on an exported tower: ONNX validity, graph interface and operators, ORT-vs-PyTorch parity.

``compare_embeddings`` and the ``onnxruntime_*`` helpers need only numpy and onnxruntime, so quantization can
reuse them to score its artifacts; the torch reference is computed by ``torch_embeddings``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._lazy import require
from .._ort_options import session_options
from ..bundle.manifest import Fidelity, TensorSpec
from ..errors import ConfigError, ExportError
from ..fidelity import compare_embeddings as _compare

logger = logging.getLogger(__name__)

FP32_MAX_ABS_DIFF = 1e-4
FP32_MIN_COSINE = 0.99999
_DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32, "float16": np.float16}


def check_onnx_model(path: str | os.PathLike[str]) -> None:
    """Run ``onnx.checker`` on the file (path-based, so models with external data over 2 GB work)."""
    onnx = require("onnx", extra="export", purpose="checking ONNX files")
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: onnx.checker rejects the model: {exc}") from None


def _load_graph_only(path: str | os.PathLike[str]) -> Any:
    onnx = require("onnx", extra="export", purpose="reading ONNX files")
    return onnx.load(str(path), load_external_data=False)


def op_types(path: str | os.PathLike[str]) -> set[str]:
    """The operator types used in the main graph of an ONNX file (weights are not loaded)."""
    return {node.op_type for node in _load_graph_only(path).graph.node}


def require_ops(path: str | os.PathLike[str], ops: Sequence[str]) -> None:
    """ExportError if the graph lacks any of ``ops`` (e.g. LayerNorm decomposed below opset 17)."""
    present = op_types(path)
    missing = [op for op in ops if op not in present]
    if missing:
        raise ExportError(f"{path}: graph has no {missing} node (expected from the export; opset too low?)")


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_interface(path: str | os.PathLike[str], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """ExportError unless the graph's inputs and outputs have exactly these names and shapes."""
    graph = _load_graph_only(path).graph
    initializers = {t.name for t in graph.initializer}
    for kind, actual, expected in (
        ("input", [v for v in graph.input if v.name not in initializers], inputs),
        ("output", list(graph.output), outputs),
    ):
        got = [(v.name, _dims(v)) for v in actual]
        want = [(spec.name, list(spec.shape)) for spec in expected]
        if got != want:
            raise ExportError(f"{path}: graph {kind}s are {got}; expected {want}")


def sample_inputs(
    spec: TensorSpec, batch: int, *, seed: int = 0, vocab_size: int = 49408
) -> np.ndarray:
    """Deterministic random inputs of the right kind for a tower with input ``spec``.

    Float inputs are standard normal (preprocessed tensors are roughly zero-mean, unit-variance).
    Token inputs look like CLIP tokenizer output: start token, random ids, end token at a random
    position (the highest id, which the text tower's argmax pooling looks for), then zero padding.
    """
    if batch < 1:
        raise ExportError(f"sample_inputs: batch must be at least 1, got {batch}")
    rng = np.random.default_rng(seed)
    shape = (batch, *spec.shape[1:])
    if any(not isinstance(d, int) for d in shape[1:]):
        raise ExportError(f"sample_inputs: {spec.name} has dynamic dims besides the batch: {spec.shape}")
    if spec.dtype.startswith("float"):
        return rng.standard_normal(shape).astype(_DTYPES[spec.dtype])
    if spec.dtype in ("int64", "int32") and len(shape) == 2:
        context = shape[1]
        sot, eot = vocab_size - 2, vocab_size - 1
        tokens = np.zeros(shape, dtype=_DTYPES[spec.dtype])
        for row in range(batch):
            end = int(rng.integers(2, context))
            tokens[row, 0] = sot
            tokens[row, 1:end] = rng.integers(1, sot, size=end - 1)
            tokens[row, end] = eot
        return tokens
    raise ExportError(f"sample_inputs: no generator for {spec.name} of dtype {spec.dtype} and shape {spec.shape}")


def check_sample_inputs(x: Any, spec: TensorSpec) -> np.ndarray:
    """Validate user-given (real, preprocessed) samples against the tower's input spec."""
    arr = np.asarray(x)
    want = spec.shape[1:]
    if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != tuple(want) or arr.shape[0] < 1:
        expected = ", ".join(map(str, want))
        raise ExportError(f"sample_inputs for {spec.name}: expected shape [N, {expected}], got {list(arr.shape)}")
    if arr.dtype != np.dtype(_DTYPES[spec.dtype]):
        same_kind = arr.dtype.kind == "f" if spec.dtype.startswith("float") else arr.dtype.kind in "iu"
        if same_kind:
            arr = arr.astype(_DTYPES[spec.dtype])
        else:
            raise ExportError(f"sample_inputs for {spec.name}: expected dtype {spec.dtype}, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ExportError(f"sample_inputs for {spec.name}: contains NaN or inf")
    return arr


def onnxruntime_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ORT CPU ``InferenceSession`` on ``path``; ExportError if ORT cannot load the model."""
    ort = require("onnxruntime", extra="export", purpose="checking exported models")
    options = session_options(ort, threads=threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped exceptions
        raise ExportError(f"{path}: onnxruntime cannot load the model: {exc}") from exc


def run_onnxruntime(session_or_path: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run an ORT session (or a file, on the CPU provider) and return its first output."""
    session = session_or_path
    if isinstance(session_or_path, (str, os.PathLike)):
        session = onnxruntime_session(session_or_path)
    try:
        return np.asarray(session.run(None, feeds)[0])
    except Exception as exc:  # shape and type errors come back as ORT's own exception types
        raise ExportError(f"onnxruntime failed to run the model on {sorted(feeds)}: {exc}") from exc


def torch_embeddings(tower: Any, inputs: np.ndarray) -> np.ndarray:
    """The PyTorch tower's output on ``inputs`` (the parity reference)."""
    torch = require("torch", extra="export", purpose="computing the PyTorch reference")
    with torch.inference_mode():
        return tower(torch.from_numpy(np.array(inputs))).detach().cpu().numpy().astype(np.float32)


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray, *, reference_name: str) -> Fidelity:
    """``edgebind.fidelity.compare_embeddings`` as a manifest ``Fidelity`` record (top-1 is None below 2 rows)."""
    try:
        fid = _compare(reference, candidate)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    top1 = fid["top1_agreement"]
    return Fidelity(
        max_abs_diff=fid["max_abs_diff"],
        min_cosine=fid["min_cosine"],
        mean_cosine=fid["mean_cosine"],
        top1_agreement=None if not np.isfinite(top1) else top1,
        n_samples=int(len(reference)),
        reference=reference_name,
    )


def check_parity(
    tower: Any | np.ndarray,
    path: str | os.PathLike[str],
    input_spec: TensorSpec,
    inputs: np.ndarray,
    *,
    max_abs_diff: float = FP32_MAX_ABS_DIFF,
    min_cosine: float = FP32_MIN_COSINE,
) -> Fidelity:
    """Compare ORT on the exported file against the PyTorch tower (or its outputs on ``inputs``, computed
    earlier so that the tower's weights need not stay in memory beside ORT's); ExportError past the tolerances.

    Also runs a single row on its own, which proves that the batch dimension really is dynamic.
    """
    reference = tower if isinstance(tower, np.ndarray) else torch_embeddings(tower, inputs)
    session = onnxruntime_session(path)
    exported = run_onnxruntime(session, {input_spec.name: inputs})
    fidelity = compare_embeddings(reference, exported, reference_name="torch-fp32")
    name = Path(path).name
    if not (fidelity.max_abs_diff <= max_abs_diff and fidelity.min_cosine >= min_cosine):
        raise ExportError(
            f"{name}: ONNX Runtime disagrees with PyTorch on {fidelity.n_samples} samples: max abs diff "
            f"{fidelity.max_abs_diff:.3g} (limit {max_abs_diff:g}), "
            f"min cosine {fidelity.min_cosine:.7f} (limit {min_cosine})"
        )
    single = run_onnxruntime(session, {input_spec.name: inputs[:1]})
    single_diff = float(np.max(np.abs(single - reference[:1]))) if single.shape == reference[:1].shape else np.inf
    if single_diff > max_abs_diff:
        raise ExportError(f"{name}: batch-1 output differs from PyTorch by {single_diff:.3g} (dynamic batch broken?)")
    logger.info("%s: parity OK, max abs diff %.2e, min cosine %.8f", name, fidelity.max_abs_diff, fidelity.min_cosine)
    return fidelity
