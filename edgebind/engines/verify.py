"""``edgebind verify``: every backend/precision this device can run, against the ORT CPU FP32 reference.

For each tower, the bundle's FP32 artifact on ONNX Runtime's CPU EP embeds the validation split
of the calibration set (the reference); every available (backend, form) pair embeds the same rows
and is scored with ``edgebind.fidelity.compare_embeddings``. A row passes when its mean cosine
reaches the threshold of its precision (FP16 >= 0.999, INT8 >= 0.99, FP32 on other backends
>= 0.9999 by default). Without a calibration set the inputs are deterministic synthetic samples
(standard normal tensors, CLIP-like token rows), and the report says so.

Which forms a backend is checked with: those the export meant for it (``quantization.
intended_backends``, else ``backends``): the ORT CPU EP gets int8-dynamic (or whatever the
backend plan gives it), GPU backends fp32/fp16/int8-qdq. ``all_forms=True`` also runs every form
the backend can load (e.g. fp16 and int8-qdq on the CPU EP), which checks the files themselves.

Device path: never imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle.manifest import Artifact, TowerRecord, load_manifest
from ..errors import CalibrationError, ConfigError, EdgebindError, EngineError
from ..fidelity import compare_embeddings
from ..modality import Modality
from .base import Engine
from .ort_engine import OrtConfig
from .select import DEFAULT_MIN_MEAN_COSINE, Availability, cpu_int8_form, open_engine

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION = Path("calibration") / "default"
ALL_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
SYNTHETIC_SAMPLES = 8


@dataclasses.dataclass
class VerifyRow:
    tower: str
    backend: str
    form: str
    precision: str
    threshold: float | None
    mean_cosine: float | None = None
    min_cosine: float | None = None
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    n: int = 0
    passed: bool = False
    error: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class VerifyReport:
    bundle: str
    reference: str
    data: dict[str, str]
    backends: dict[str, str]
    rows: list[VerifyRow] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)  # a bundle with nothing besides the reference passes

    @property
    def failed(self) -> list[VerifyRow]:
        return [row for row in self.rows if not row.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "passed": self.passed, "reference": self.reference, "data": self.data,
                "backends": self.backends, "rows": [r.to_dict() for r in self.rows],
                "failed": [f"{r.tower}/{r.backend}/{r.form}" for r in self.failed]}


def runs_form(backend: str, artifact: Artifact, all_forms: bool = False, cpu_form: str | None = None) -> bool:
    """Whether ``verify`` checks ``artifact`` on ``backend`` (``cpu_form``: the INT8 form the backend plan gives the CPU)."""
    if artifact.form == "int8-dynamic" and backend in ("tensorrt", "onnxruntime-tensorrt"):
        return False  # TensorRT has no dynamic-quantization layers
    if (all_forms and backend.startswith("onnxruntime")) or (backend == "onnxruntime-cpu" and artifact.form == cpu_form):
        return True
    targets = artifact.quantization.get("intended_backends") or artifact.backends
    return any(t == backend or (t == "onnxruntime" and backend.startswith("onnxruntime-")) for t in targets)


def available_backends(avail: Availability) -> dict[str, str]:
    """Backend -> "available" or the reason it is not, for this device."""
    out = {"onnxruntime-cpu": "available"}
    for backend, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                              ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
        if provider not in avail.ort_providers:
            out[backend] = f"not available: ONNX Runtime has no {provider}"
        else:
            out[backend] = "available" if avail.gpu else f"not available: {avail.gpu_reason}"
    if not avail.tensorrt:
        out["tensorrt"] = f"not available: {avail.tensorrt_reason}"
    elif not avail.gpu:
        out["tensorrt"] = f"not available: {avail.gpu_reason}"
    else:
        out["tensorrt"] = "available" if avail.trt_backend_installed else "not available: no trt_engine module"
    return out


def _synthetic(tower: TowerRecord, vocab_size: int) -> np.ndarray:
    from ..export.checks import sample_inputs  # numpy only; imported lazily to keep the device path lean

    return sample_inputs(tower.input, SYNTHETIC_SAMPLES, seed=0, vocab_size=vocab_size)


def _inputs(tower: TowerRecord, modality: Modality, calib: Any, vocab_size: int) -> tuple[np.ndarray, str]:
    synthetic = f"{SYNTHETIC_SAMPLES} synthetic samples (seed 0)"
    if calib is None:
        return _synthetic(tower, vocab_size), f"{synthetic}: no calibration set"
    if modality not in calib.modalities:
        return _synthetic(tower, vocab_size), f"{synthetic}: calibration set {calib.path} has no {modality.value} data"
    rows = np.asarray(calib.val(modality))
    want = tuple(tower.input.shape[1:])
    if tuple(rows.shape[1:]) != want:
        raise CalibrationError(f"calibration set {calib.path}: {modality.value} rows are {list(rows.shape[1:])}, "
                               f"the bundle's tower expects {list(want)} (a set for another model?)")
    return rows, f"{len(rows)} validation rows of {calib.path}"


def _embed(engine: Engine, rows: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([engine.run(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)])


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def verify_bundle(bundle_dir: str | os.PathLike[str], *, calibration: str | os.PathLike[str] | None = None,
                  backends: Sequence[str] | None = None, precisions: Sequence[str] | None = None,
                  thresholds: dict[str, float] | None = None, engines_root: str | os.PathLike[str] | None = "engines",
                  modalities: Sequence[str | Modality] | None = None, batch_size: int = 8,
                  threads: int | None = None, all_forms: bool = False,
                  availability: Availability | None = None) -> VerifyReport:
    """Score every available (backend, form) of every tower against ORT CPU FP32; see the module docstring.

    backends: limit to these ("onnxruntime" means all ORT providers); an unavailable one named
    here becomes a failing row. precisions: limit to "fp32", "fp16", "int8" or exact forms.
    thresholds: per precision minimum mean cosine, merged over the defaults.
    """
    from ..calibration import CalibrationSet

    limits = {**DEFAULT_MIN_MEAN_COSINE, **(thresholds or {})}
    unknown = sorted(set(limits) - set(DEFAULT_MIN_MEAN_COSINE))
    if unknown:
        raise ConfigError(f"thresholds: unknown precision(s) {unknown}; expected {sorted(DEFAULT_MIN_MEAN_COSINE)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    calib_dir = Path(calibration) if calibration is not None else DEFAULT_CALIBRATION
    calib = None
    if calibration is not None or calib_dir.is_dir():
        calib = CalibrationSet.open(calib_dir)
    avail = availability or Availability.detect()
    status = available_backends(avail)
    wanted = list(ALL_BACKENDS) if not backends else []
    for name in backends or ():
        expanded = [b for b in ALL_BACKENDS if b.startswith("onnxruntime-")] if name == "onnxruntime" else [name]
        for b in expanded:
            if b not in ALL_BACKENDS:
                raise ConfigError(f"unknown backend {b!r}; expected one of {list(ALL_BACKENDS)} or 'onnxruntime'")
            if b not in wanted:
                wanted.append(b)
    config = OrtConfig(threads=threads)
    towers = [Modality.parse(m) for m in modalities] if modalities else [Modality.parse(m) for m in manifest.towers]
    vocab = int(manifest.model_config.get("text_vocab_size", 49408))
    report = VerifyReport(bundle=os.fspath(bundle_dir), reference="onnxruntime-cpu fp32", data={}, backends=status)
    for modality in towers:
        tower = manifest.tower(modality)
        rows, source = _inputs(tower, modality, calib, vocab)
        report.data[modality.value] = source
        cpu_form = cpu_int8_form(tower)
        with open_engine(bundle_dir, modality, backend="onnxruntime-cpu", precision="fp32", config=config,
                         engines_root=engines_root, availability=avail) as ref_engine:
            reference = _embed(ref_engine, rows, batch_size)
        for backend in wanted:
            explicit = bool(backends)
            if status[backend] != "available":
                if explicit:
                    report.rows.append(VerifyRow(tower=modality.value, backend=backend, form="-", precision="-",
                                                 threshold=None, error=status[backend]))
                continue
            for art in tower.artifacts:
                if (backend, art.form) == ("onnxruntime-cpu", "fp32") or not runs_form(backend, art, all_forms, cpu_form):
                    continue
                if precisions and art.precision not in precisions and art.form not in precisions:
                    continue
                report.rows.append(_score(bundle_dir, modality, backend, art, rows, reference, limits[art.precision],
                                          config=config, engines_root=engines_root, avail=avail,
                                          batch_size=batch_size))
    return report


def _score(bundle_dir: Path, modality: Modality, backend: str, art: Artifact, rows: np.ndarray,
           reference: np.ndarray, threshold: float, *, config: OrtConfig, engines_root: Any, avail: Availability,
           batch_size: int) -> VerifyRow:
    row = VerifyRow(tower=modality.value, backend=backend, form=art.form, precision=art.precision,
                    threshold=threshold, n=len(rows))
    try:
        with open_engine(bundle_dir, modality, backend=backend, precision=art.form, config=config,
                         engines_root=engines_root, availability=avail) as engine:
            row.reason = engine.reason
            test = _embed(engine, rows, batch_size)
        scores = compare_embeddings(reference, test)
    except (EdgebindError, EngineError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        logger.warning("verify %s %s %s: %s", modality.value, backend, art.form, row.error)
        return row
    row.mean_cosine = _finite(scores["mean_cosine"])
    row.min_cosine = _finite(scores["min_cosine"])
    row.top1_agreement = _finite(scores["top1_agreement"])
    row.max_abs_diff = _finite(scores["max_abs_diff"])
    row.passed = row.mean_cosine is not None and row.mean_cosine >= threshold
    return row
