"""One tower on one backend, behind a common ``run(batch)``: PyTorch eager, ONNX Runtime, TensorRT.

Backends (``BACKENDS``):

- ``torch-eager-fp32``: the PyTorch tower (``edgebind.models.imagebind.build`` + ``model.tower``) with
  the bundle's geometry and seed, ``torch.inference_mode``; the baseline. Host only (needs torch).
- ``ort-cpu-*`` / ``ort-cuda-*`` / ``ort-trt-*``: the bundle's artifact of that form on ONNX Runtime,
  and ``tensorrt-fp16`` / ``tensorrt-int8`` on native TensorRT, all through
  ``edgebind.engines.open_engine`` (the engines the runtime uses; artifacts are checked against
  their sha256 on open).

``unavailable_reason`` says why a backend cannot run here (missing module, provider or artifact)
without opening anything; the benchmark records that reason instead of a number.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._lazy import is_available, require
from ..bundle.manifest import Manifest, TensorSpec
from ..errors import ConfigError, EngineError, ManifestError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """How one backend name maps onto the bundle: runtime kind, artifact precision/form, ORT provider."""

    kind: str  # "torch" | "onnxruntime" | "tensorrt"
    precision: str
    form: str
    provider: str | None = None  # ORT provider: "cpu" | "cuda" | "tensorrt"


BACKENDS: dict[str, BackendSpec] = {
    "torch-eager-fp32": BackendSpec("torch", "fp32", "fp32"),
    "ort-cpu-fp32": BackendSpec("onnxruntime", "fp32", "fp32", "cpu"),
    "ort-cpu-fp16": BackendSpec("onnxruntime", "fp16", "fp16", "cpu"),
    "ort-cpu-int8-qdq": BackendSpec("onnxruntime", "int8", "int8-qdq", "cpu"),
    "ort-cpu-int8-dynamic": BackendSpec("onnxruntime", "int8", "int8-dynamic", "cpu"),
    "ort-cuda-fp32": BackendSpec("onnxruntime", "fp32", "fp32", "cuda"),
    "ort-cuda-fp16": BackendSpec("onnxruntime", "fp16", "fp16", "cuda"),
    "ort-trt-fp16": BackendSpec("onnxruntime", "fp16", "fp16", "tensorrt"),
    "ort-trt-int8": BackendSpec("onnxruntime", "int8", "int8-qdq", "tensorrt"),
    "tensorrt-fp16": BackendSpec("tensorrt", "fp16", "fp16"),
    "tensorrt-int8": BackendSpec("tensorrt", "int8", "int8-qdq"),
}
BASELINE = "torch-eager-fp32"
_ORT_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                       "tensorrt": "TensorrtExecutionProvider"}


def backend_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; expected one of {list(BACKENDS)}")
    return BACKENDS[name]


def peak_key(name: str) -> str:
    """Which attainable matmul rate a backend is compared with: "int8" for INT8 forms, else "fp32".

    ONNX Runtime's x86 CPU EP has no FP16 GEMM (FP16 graphs run through casts), so CPU FP16 is
    compared with the FP32 rate; GPU FP16 needs a GPU rate (not measured by ``peak``).
    """
    spec = backend_spec(name)
    if spec.precision == "int8":
        return "int8"
    if spec.precision == "fp16" and (spec.kind == "tensorrt" or spec.provider in ("cuda", "tensorrt")):
        return "fp16-gpu"
    return "fp32"


def unavailable_reason(name: str, manifest: Manifest, modality: str) -> str | None:
    """Why ``name`` cannot run ``modality`` of this bundle here, or None when it can."""
    spec = backend_spec(name)
    if spec.kind == "torch":
        if not is_available("torch"):
            return "PyTorch is not installed (the 'export' extra); the eager baseline runs on the host only"
        return None
    try:
        manifest.artifact(modality, spec.precision, spec.form)
    except ManifestError as exc:
        return f"the bundle has no {spec.form} artifact: {exc}"
    if spec.kind == "onnxruntime":
        if not is_available("onnxruntime"):
            return "onnxruntime is not installed"
        ort = importlib.import_module("onnxruntime")
        providers = list(ort.get_available_providers())
        wanted = _ORT_PROVIDER_NAMES[spec.provider or "cpu"]
        if wanted not in providers:
            return f"onnxruntime {ort.__version__} has no {wanted} (available: {providers})"
        return None
    if not is_available("tensorrt"):
        return "Python module 'tensorrt' is not importable (JetPack ships it; on x86 pip install tensorrt)"
    engines = importlib.import_module("edgebind.engines")
    if not hasattr(engines, "open_engine"):
        return "edgebind.engines.open_engine is not available in this edgebind"
    return None


def make_input(spec: TensorSpec, batch: int, *, seed: int = 0, vocab_size: int = 49408) -> np.ndarray:
    """A deterministic input of the tower's shape: N(0, 1) floats, or SOT + random ids + EOT token rows."""
    dims = [batch if i == 0 else d for i, d in enumerate(spec.shape)]
    if any(not isinstance(d, int) for d in dims):
        raise ConfigError(f"input {spec.name!r} has a dynamic dim other than batch: {spec.shape}")
    rng = np.random.default_rng(seed)
    if spec.dtype in ("int64", "int32"):
        tokens = np.zeros(dims, dtype=np.dtype(spec.dtype))
        length = min(dims[-1], 16)
        tokens[..., 0] = vocab_size - 2  # start of text
        tokens[..., 1:length - 1] = rng.integers(1, vocab_size - 2, size=(*dims[:-1], length - 2))
        tokens[..., length - 1] = vocab_size - 1  # end of text: the tower pools here
        return tokens
    return rng.standard_normal(dims).astype(np.float32)


@dataclasses.dataclass
class Runner:
    """An opened backend: ``run(batch)`` returns [B, D] embeddings; ``info`` describes what runs."""

    name: str
    run: Callable[[np.ndarray], Any]
    close: Callable[[], None]
    info: dict[str, Any]


def open_runner(name: str, bundle_dir: str | os.PathLike[str], manifest: Manifest, modality: str, *,
                threads: int = 2, engines_root: str | os.PathLike[str] | None = None) -> Runner:
    """Open ``name`` for one tower. Check ``unavailable_reason`` first; this raises when it cannot run."""
    spec = backend_spec(name)
    bundle_dir = Path(bundle_dir)
    if spec.kind == "torch":
        return _open_torch(name, manifest, modality, threads)
    artifact = manifest.artifact(modality, spec.precision, spec.form)
    from ..engines.select import open_engine

    if spec.kind == "onnxruntime":
        # CPU: no cache folder (ORT optimises the graph at load); GPU providers cache their engines.
        root = None if spec.provider == "cpu" else (engines_root or "engines")
        engine = open_engine(bundle_dir, modality, backend=f"onnxruntime-{spec.provider}", precision=spec.form,
                             threads=threads, engines_root=root)
    else:
        engine = open_engine(bundle_dir, modality, backend="tensorrt", precision=spec.precision,
                             engines_root=engines_root or "engines")
    info = {"engine": getattr(engine, "backend", spec.kind), "form": getattr(engine, "form", spec.form),
            "file": artifact.file, "size_bytes": int(artifact.size_bytes + (artifact.data_size_bytes or 0)),
            "providers": getattr(engine, "providers", None), "reason": getattr(engine, "reason", "")}
    if info["form"] != spec.form:
        engine.close()
        raise EngineError(f"{name}: open_engine gave the {info['form']} artifact, expected {spec.form}")
    return Runner(name, engine.run, engine.close, info)


def _open_torch(name: str, manifest: Manifest, modality: str, threads: int) -> Runner:
    torch = require("torch", extra="export", purpose="the PyTorch eager baseline")
    from ..models.imagebind import build

    torch.set_num_threads(threads)
    tower_record = manifest.tower(modality)
    model = build(manifest.model, modalities=[modality], seed=manifest.seed or 0)
    tower = model.tower(modality, video=tower_record.video).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    note = "" if manifest.checkpoint_sha256 == "random-init" else " (not the bundle's trained weights: timing only)"

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return tower(torch.from_numpy(batch)).numpy()

    def close() -> None:
        nonlocal model, tower
        model = tower = None  # type: ignore[assignment]

    info = {"engine": f"torch {torch.__version__} eager", "form": "fp32", "file": None, "size_bytes": weights,
            "size_note": "FP32 parameter bytes (no file)", "threads": torch.get_num_threads(),
            "weights": f"random init, seed {manifest.seed or 0}{note}"}
    return Runner(name, run, close, info)
