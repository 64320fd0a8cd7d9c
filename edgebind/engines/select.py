"""``open_engine``: the fastest usable engine for one tower, and a sentence saying why it was chosen.

Backend (``backend="auto"``): native TensorRT when the ``tensorrt`` module and a GPU are present,
else ONNX Runtime with its best provider (TensorRT EP > CUDA EP > CPU). Artifact
(``precision="auto"``), always from the manifest's records, never re-derived:

- ORT CPU: the INT8 form the export's backend plan gives the CPU (``int8-dynamic``) when its
  recorded mean cosine passes the INT8 threshold, else FP32. FP16 is never auto-picked on CPU
  (ORT's CPU kernels are FP32; an FP16 graph only adds casts).
- ORT CUDA, ORT TensorRT EP, TensorRT: FP16 when its recorded fidelity passes, else FP32. INT8
  (``int8-qdq``) only on request: for ViT towers it is often no faster than FP16 on TensorRT.

If an auto-picked artifact fails to load, the next candidate is tried and the reason says so.
Explicit requests that cannot be honoured raise EngineError (MissingDependencyError for an absent
TensorRT) naming what is available.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from .._lazy import is_available
from ..bundle.manifest import Artifact, Manifest, TowerRecord, load_manifest, verify_files
from ..errors import EngineError, ManifestError, MissingDependencyError
from ..modality import Modality
from .base import Engine
from .environment import gpu_facts, onnxruntime_facts, tensorrt_facts
from .ort_engine import PROVIDER_NAMES, OrtConfig, open_ort_engine

logger = logging.getLogger(__name__)

BACKEND_REQUESTS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt")
PRECISION_REQUESTS = ("auto", "fp32", "fp16", "int8", "int8-qdq", "int8-dynamic")
DEFAULT_MIN_MEAN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
"""Fidelity (mean cosine against FP32) an artifact needs to be auto-picked, and ``edgebind verify``'s thresholds."""

_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime_ns, sha256) checked in this process
_DETECTED: dict[type, "Availability"] = {}


@dataclasses.dataclass(frozen=True)
class Availability:
    """What this device offers, with the reason for each absence."""

    tensorrt: bool
    tensorrt_reason: str
    gpu: bool
    gpu_reason: str
    ort_providers: tuple[str, ...]
    trt_backend_installed: bool = True

    @classmethod
    def detect(cls, refresh: bool = False) -> "Availability":
        """This device's facts, probed once per process (``refresh`` probes again)."""
        if refresh or cls not in _DETECTED:
            _DETECTED[cls] = cls._probe()
        return _DETECTED[cls]

    @classmethod
    def _probe(cls) -> "Availability":
        trt, gpu, ort = tensorrt_facts(), gpu_facts(), onnxruntime_facts()
        trt_reason = f"TensorRT {trt.get('version')}" if trt["available"] else trt["reason"]
        gpu_reason = (f"GPU {gpu.get('name')} (compute {gpu.get('compute_capability', '?')})"
                      if gpu["available"] else gpu["reason"])
        return cls(tensorrt=trt["available"], tensorrt_reason=trt_reason, gpu=gpu["available"], gpu_reason=gpu_reason,
                   ort_providers=tuple(ort.get("providers", ())),
                   trt_backend_installed=is_available("edgebind.engines.trt_engine"))


def choose_backend(request: str, avail: Availability, providers: Sequence[str] | None = None) -> tuple[str, str]:
    """(backend, why) for ``request``; raises for an explicit request this device cannot serve."""
    if request not in BACKEND_REQUESTS:
        raise EngineError(f"unknown backend {request!r}; expected one of {list(BACKEND_REQUESTS)}")
    if providers:
        names = {v: k for k, v in PROVIDER_NAMES.items()}
        first = next((names[p] for p in providers if p in names), None)
        if first is None:
            raise EngineError(f"providers={list(providers)} names no provider edgebind drives; use {list(names)}")
        request = f"onnxruntime-{first}"
    has = {p: PROVIDER_NAMES[p] in avail.ort_providers for p in PROVIDER_NAMES}
    native_ok = avail.tensorrt and avail.gpu and avail.trt_backend_installed
    if request == "tensorrt":
        if not avail.tensorrt:
            raise MissingDependencyError("tensorrt", extra="tensorrt",
                                         purpose="the TensorRT backend; JetPack ships it, on x86 pip install tensorrt")
        if not avail.gpu:
            raise EngineError(f"backend='tensorrt' needs a CUDA GPU: {avail.gpu_reason}")
        if not avail.trt_backend_installed:
            raise EngineError("backend='tensorrt': edgebind.engines.trt_engine is not part of this edgebind build")
        return "tensorrt", f"TensorRT requested; {avail.tensorrt_reason}, {avail.gpu_reason}"
    if request.startswith("onnxruntime-"):
        provider = request.split("-", 1)[1]
        if not has[provider]:
            raise EngineError(f"backend={request!r}: ONNX Runtime has no {PROVIDER_NAMES[provider]} here "
                              f"(available: {list(avail.ort_providers)}; install onnxruntime-gpu for CUDA/TensorRT)")
        return request, f"{request} requested"
    skipped = []
    if request == "auto":
        if native_ok:
            return "tensorrt", f"{avail.tensorrt_reason} and {avail.gpu_reason} present"
        if not avail.tensorrt:
            skipped.append(f"TensorRT absent: {avail.tensorrt_reason}")
        elif not avail.gpu:
            skipped.append(f"TensorRT present but no GPU ({avail.gpu_reason})")
        else:
            skipped.append("edgebind's TensorRT backend module is missing")
    for provider in ("tensorrt", "cuda"):
        if has[provider] and avail.gpu:
            return f"onnxruntime-{provider}", "; ".join([*skipped, f"{PROVIDER_NAMES[provider]} available"])
        why = "no GPU" if has[provider] else "not available"
        skipped.append(f"{'TensorRT' if provider == 'tensorrt' else 'CUDA'} EP {why}")
    return "onnxruntime-cpu", "; ".join(skipped)


def cpu_int8_form(tower: TowerRecord) -> str | None:
    """The INT8 form the export's backend plan gives ONNX Runtime's CPU EP (None without INT8 artifacts)."""
    for art in tower.artifacts:
        plan = art.quantization.get("backend_plan") if art.precision == "int8" else None
        if isinstance(plan, dict) and isinstance(plan.get("onnxruntime-cpu"), dict):
            return str(plan["onnxruntime-cpu"].get("form"))
    forms = [a.form for a in tower.artifacts if a.precision == "int8"]
    return "int8-dynamic" if "int8-dynamic" in forms else (forms[0] if forms else None)


def _fidelity_ok(art: Artifact, thresholds: dict[str, float]) -> tuple[bool, str]:
    if art.fidelity is None:
        return False, f"{art.form} has no recorded fidelity"
    need = thresholds[art.precision]
    mean = art.fidelity.mean_cosine
    return mean >= need, f"recorded mean cosine {mean:.5f} {'>=' if mean >= need else '<'} {need}"


def choose_artifacts(tower: TowerRecord, backend: str, precision: str = "auto",
                     thresholds: dict[str, float] | None = None) -> list[tuple[Artifact, str]]:
    """Candidate artifacts for ``backend`` in order of preference, each with the reason."""
    if precision not in PRECISION_REQUESTS:
        raise EngineError(f"unknown precision {precision!r}; expected one of {list(PRECISION_REQUESTS)}")
    thresholds = {**DEFAULT_MIN_MEAN_COSINE, **(thresholds or {})}
    by_form = {a.form: a for a in tower.artifacts}
    have = sorted(by_form) or ["none"]
    gpu = backend != "onnxruntime-cpu"
    if precision != "auto":
        form = precision
        if precision == "int8":
            form = "int8-qdq" if gpu else (cpu_int8_form(tower) or "int8-dynamic")
        if form == "int8-dynamic" and backend in ("tensorrt", "onnxruntime-tensorrt"):
            raise EngineError(f"{backend} cannot use int8-dynamic (MatMulInteger is not a TensorRT INT8 layer); "
                              "ask for precision='int8' to get the Q/DQ artifact")
        if form not in by_form:
            raise EngineError(f"precision={precision!r} on {backend}: the bundle has no {form} artifact for this "
                              f"tower (it has {', '.join(have)}); re-export with --precision {precision.split('-')[0]}")
        note = "; FP16 is not faster on ONNX Runtime's CPU EP" if form == "fp16" and not gpu else ""
        return [(by_form[form], f"{form} requested{note}")]
    candidates: list[tuple[Artifact, str]] = []
    notes = []
    preferred = ([cpu_int8_form(tower)] if not gpu else ["fp16"])
    for form in preferred:
        art = by_form.get(form) if form else None
        if art is None:
            notes.append(f"no {form or 'INT8'} artifact")
            continue
        ok, why = _fidelity_ok(art, thresholds)
        if not ok:
            notes.append(f"{form} skipped: {why}")
            continue
        extra = (" and the export's backend plan gives it to the CPU; FP16 is not faster on CPU" if not gpu else
                 "; int8-qdq is opt-in (precision='int8'): on GPUs INT8 is often no faster than FP16 for ViT towers")
        candidates.append((art, f"{form} chosen: {why}{extra}"))
    if "fp32" not in by_form:
        if not candidates:
            raise EngineError(f"the bundle has no usable artifact for {backend} ({'; '.join(notes)}; it has {', '.join(have)})")
    else:
        candidates.append((by_form["fp32"], "fp32 chosen: " + ("; ".join(notes) or "fallback")))
    return candidates


def verify_artifact(bundle_dir: Path, manifest: Manifest, modality: Modality, artifact: Artifact) -> None:
    """Check the artifact's files against their sha256 once per process (again if size or mtime change)."""
    stamps = []
    for rel, digest, _ in artifact.files():
        try:
            st = (bundle_dir / rel).stat()
        except OSError:
            stamps = []
            break
        stamps.append((os.fspath((bundle_dir / rel).resolve()), st.st_size, st.st_mtime_ns, digest))
    if stamps and all(s in _VERIFIED for s in stamps):
        return
    tower = dataclasses.replace(manifest.tower(modality), artifacts=(artifact,))
    only = dataclasses.replace(manifest, towers={modality.value: tower}, label_bank=None)
    verify_files(only, bundle_dir, modalities=[modality])
    _VERIFIED.update(stamps)


def _open_one(bundle_dir: Path, manifest: Manifest, modality: Modality, backend: str, artifact: Artifact, reason: str,
              *, config: OrtConfig, engines_root: str | os.PathLike[str] | None, build: bool, strict: bool,
              refresh: bool, trt_options: dict[str, Any]) -> Engine:
    verify_artifact(bundle_dir, manifest, modality, artifact)
    if backend == "tensorrt":
        from .trt_engine import open_trt_engine

        engine = open_trt_engine(bundle_dir, manifest, modality, artifact.precision, engines_root=engines_root,
                                 build=build, **trt_options)
        engine.reason = f"{reason}; {engine.reason}" if engine.reason else reason
        return engine
    provider = backend.split("-", 1)[1]
    return open_ort_engine(bundle_dir, manifest.model, modality, manifest.tower(modality), artifact,
                           provider=provider, config=config, engines_root=engines_root, reason=reason,  # type: ignore[arg-type]
                           strict=strict, refresh=refresh, build=build)


def open_engine(bundle_dir: str | os.PathLike[str], modality: Modality | str, *, backend: str = "auto",
                precision: str = "auto", threads: int | None = None, engines_root: str | os.PathLike[str] | None = "engines",
                providers: Sequence[str] | None = None, build: bool = True, config: OrtConfig | None = None,
                thresholds: dict[str, float] | None = None, refresh: bool = False,
                availability: Availability | None = None, trt_options: dict[str, Any] | None = None) -> Engine:
    """Open the engine for one tower of the bundle in ``bundle_dir``; ``engine.reason`` says why this one.

    backend: "auto", "tensorrt", "onnxruntime" (best ORT provider) or "onnxruntime-cpu|cuda|tensorrt".
    precision: "auto", "fp32", "fp16", "int8" (the backend's INT8 form), "int8-qdq" or "int8-dynamic".
    threads: ORT intra-op threads (overrides ``config.threads``). engines_root: cache folder
    (None: no caches). build=False refuses to build a TensorRT engine that is not cached.
    """
    bundle_dir = Path(bundle_dir)
    modality = Modality.parse(modality)
    manifest = load_manifest(bundle_dir)
    tower = manifest.tower(modality)
    config = config or OrtConfig()
    if threads is not None:
        config = config.replace(threads=threads)
    avail = availability or Availability.detect()
    chosen, why_backend = choose_backend(backend, avail, providers)
    candidates = choose_artifacts(tower, chosen, precision, thresholds)
    strict = backend != "auto" and backend != "onnxruntime" and not providers
    failures: list[str] = []
    for i, (artifact, why_artifact) in enumerate(candidates):
        reason = f"{chosen}: {why_backend}; {'; '.join([*failures, why_artifact])}"
        try:
            engine = _open_one(bundle_dir, manifest, modality, chosen, artifact, reason, config=config,
                               engines_root=engines_root, build=build, strict=strict, refresh=refresh,
                               trt_options=trt_options or {})
        except EngineError as exc:  # a sha256 mismatch (ManifestError) is never papered over by a fallback
            if precision != "auto" or i == len(candidates) - 1:
                raise
            logger.warning("%s %s on %s failed (%s); trying the next artifact", modality.value, artifact.form, chosen, exc)
            failures.append(f"{artifact.form} failed to open ({exc})")
            continue
        logger.debug("%s: %s", modality.value, engine.reason)
        return engine
    raise EngineError(f"no engine could be opened for {modality.value}")  # pragma: no cover - loop returns or raises


@dataclasses.dataclass
class BuildReport:
    """What ``build_engines`` did: one row per (tower, requested precision)."""

    bundle: str
    backend: str
    engines_root: str
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(row["error"] is None for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "backend": self.backend, "engines_root": self.engines_root, "ok": self.ok,
                "rows": self.rows}


def build_engines(bundle_dir: str | os.PathLike[str], *, precisions: Sequence[str] | None = None,
                  backend: str = "auto", engines_root: str | os.PathLike[str] = "engines",
                  modalities: Sequence[str | Modality] | None = None, threads: int | None = None,
                  refresh: bool = False, config: OrtConfig | None = None,
                  availability: Availability | None = None) -> BuildReport:
    """Build (or refresh) the cached engines of every tower on this device.

    Each tower is opened once per precision (default: the one ``open_engine`` would pick), which
    fills the caches (optimised ORT graphs, TensorRT EP engines or native TensorRT plans), and run
    once so lazily built engines exist too. ``refresh`` rebuilds ORT caches that are still valid.
    An explicit ``backend="tensorrt"`` without TensorRT raises MissingDependencyError; "auto" then
    builds the ONNX Runtime caches. Per-tower failures are recorded in the report, not raised.
    """
    import time

    manifest = load_manifest(bundle_dir)
    avail = availability or Availability.detect()
    chosen, why = choose_backend(backend, avail)
    towers = [Modality.parse(m) for m in modalities] if modalities else [Modality.parse(m) for m in manifest.towers]
    report = BuildReport(bundle=os.fspath(bundle_dir), backend=chosen, engines_root=os.fspath(engines_root))
    logger.info("building engines on %s: %s", chosen, why)
    for modality in towers:
        for precision in precisions or ["auto"]:
            row: dict[str, Any] = {"tower": modality.value, "requested": precision, "backend": chosen, "form": None,
                                   "precision": None, "seconds": None, "cache": None, "reason": None, "error": None}
            start = time.perf_counter()
            try:
                with open_engine(bundle_dir, modality, backend=backend, precision=precision, threads=threads,
                                 engines_root=engines_root, build=True, config=config, refresh=refresh,
                                 availability=avail) as engine:
                    engine.warmup(1)
                    row.update(form=engine.form, precision=engine.precision, backend=engine.backend,
                               reason=engine.reason, cache=getattr(engine, "cache", None))
            except MissingDependencyError:
                raise
            except (EngineError, ManifestError) as exc:
                row["error"] = str(exc)
            row["seconds"] = round(time.perf_counter() - start, 3)
            report.rows.append(row)
    return report


def resolve_bundle(path: str | os.PathLike[str] | None = None, export_root: str | os.PathLike[str] = "export") -> Path:
    """The bundle folder: ``path`` when given, else the only bundle under ``export_root`` (ManifestError otherwise)."""
    if path is not None:
        return Path(path)
    found = sorted(p.parent for p in Path(export_root).glob("*/manifest.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ManifestError(f"no bundle given and none found in {export_root}/ (run `edgebind export` or pass BUNDLE)")
    raise ManifestError(f"several bundles in {export_root}/ ({', '.join(map(str, found))}); pass one as BUNDLE")
