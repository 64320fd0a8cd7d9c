"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers, with on-disk caches.

Caches live under ``<engines_root>/<model>/ort/`` in one folder per key::

    <modality>.<form>.<sha256[:16]>.<provider>[.<graph level>]/   e.g. vision.int8-dynamic.1a2b3c4d5e6f7a8b.cpu.all/
        optimized.onnx (+ optimized.onnx.data)   CPU / CUDA: the graph after ORT's optimisations
        *.engine, *.profile                      TensorRT EP: ORT's engine cache for this model only
        ort_cache.json                           sidecar: what the cache was made from and for

The key holds the artifact's form (so its precision) and the first 16 hex digits of its sha256,
the provider and, for optimised models, the graph-optimisation level, so caches of different
models, precisions and providers never mix. The sidecar records the runtime and device
(ORT/TensorRT versions, GPU + compute capability, L4T, CPU architecture); a cache whose sidecar no
longer matches the device is stale and is rebuilt instead of being loaded (ORT itself never
invalidates TensorRT EP engines, microsoft/onnxruntime#22244; an optimised CPU graph at level
"all" is tied to the CPU's vector features, hence the ``cpu`` entry). The TensorRT timing cache is
shared by the towers of a model in ``<engines_root>/<model>/ort/trt-timing/``. Folders are built
under a temporary name and renamed into place, so an interrupted build leaves no half cache.

Device path: never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from .._config import ConfigMixin
from .._io import _current_umask, atomic_write_json
from .._lazy import require
from .._ort_options import GRAPH_LEVELS, session_options
from ..bundle.manifest import Artifact, TowerRecord
from ..errors import ConfigError, EngineError
from ..modality import Modality
from .base import Engine
from .environment import cached_fingerprint

logger = logging.getLogger(__name__)

Provider = Literal["cpu", "cuda", "tensorrt"]
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
BACKEND_OF = {"cpu": "onnxruntime-cpu", "cuda": "onnxruntime-cuda", "tensorrt": "onnxruntime-tensorrt"}
SIDECAR = "ort_cache.json"
OPTIMIZED = "optimized.onnx"
_EXTERNAL_DATA_MIN_BYTES = 1 << 30  # write the optimised model's weights to a side file above this size
# Sidecar facts that must match the device for each provider's cache to be usable.
_DEVICE_KEYS = {"cpu": ("onnxruntime", "cpu"),
                "cuda": ("onnxruntime", "cpu", "gpu", "compute_capability"),
                "tensorrt": ("onnxruntime", "machine", "tensorrt", "gpu", "compute_capability", "l4t")}
# TensorRT EP options newer than the ORT versions edgebind supports (onnxruntime >= 1.17 has them all;
# kept so a hand-installed older JetPack wheel gets a working option set instead of "unknown option").
_TRT_OPTION_MIN_ORT = {"trt_builder_optimization_level": (1, 15), "trt_timing_cache_path": (1, 16)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrtConfig(ConfigMixin):
    """ONNX Runtime session settings.

    threads: intra-op threads (None: ORT's default, one per physical core).
    graph_optimization_level: "disable" | "basic" | "extended" | "all".
    cache_optimized_model: save the optimised graph (CPU/CUDA) and load it on the next open.
    trt_*: TensorRT EP settings; ``trt_int8_with_fp16`` lets layers left in float by the Q/DQ
    model run in FP16 (else FP32, which usually makes INT8 slower than plain FP16).
    batch_profile: (min, opt, max) batch of the TensorRT EP's optimisation profile.
    spin_wait: let intra-op threads busy-wait between runs (ORT's own default). Off because several
    towers (or other processes) share the cores; see ``edgebind._ort_options`` for the measurement.
    """

    threads: int | None = None
    graph_optimization_level: str = "all"
    cache_optimized_model: bool = True
    device_id: int = 0
    cuda_arena_extend_strategy: str = "kSameAsRequested"
    gpu_mem_limit_bytes: int | None = None
    trt_max_workspace_size: int = 1 << 30
    trt_builder_optimization_level: int | None = 3
    trt_int8_with_fp16: bool = True
    trt_layer_norm_fp32_fallback: bool = True
    batch_profile: tuple[int, int, int] = (1, 1, 8)
    log_severity_level: int = 3
    spin_wait: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"OrtConfig.threads: expected None or a positive int, got {self.threads}")
        if self.graph_optimization_level not in GRAPH_LEVELS:
            raise ConfigError(f"OrtConfig.graph_optimization_level: expected one of {list(GRAPH_LEVELS)}, "
                              f"got {self.graph_optimization_level!r}")
        lo, opt, hi = self.batch_profile
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"OrtConfig.batch_profile: expected 1 <= min <= opt <= max, got {self.batch_profile}")
        level = self.trt_builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise ConfigError(f"OrtConfig.trt_builder_optimization_level: expected 0..5 or None, got {level}")


def version_tuple(version: str | None) -> tuple[int, int]:
    """``"1.32.0"`` -> ``(1, 32)``; unknown -> ``(0, 0)``."""
    try:
        major, minor = (version or "").split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except ValueError:
        return (0, 0)


# -- provider options (pure functions) ------------------------------------------------------------
def _profile_shapes(input_spec: Any, batch: int) -> str:
    dims = [str(batch) if i == 0 or not isinstance(d, int) else str(d) for i, d in enumerate(input_spec.shape)]
    return f"{input_spec.name}:{'x'.join(dims)}"


def tensorrt_provider_options(*, form: str, input_spec: Any, cache_dir: str | os.PathLike[str] | None,
                              timing_cache_dir: str | os.PathLike[str] | None, config: OrtConfig,
                              ort_version: str) -> dict[str, Any]:
    """TensorRT EP options for an artifact of ``form`` ("fp32", "fp16", "int8-qdq").

    INT8 comes only from the Q/DQ nodes: ``trt_int8_enable`` is set for Q/DQ models and a
    calibration table is never given (TensorRT refuses one when the network has Q/DQ nodes).
    ``cache_dir=None``: no engine/timing caches (every session builds its engines again).
    """
    if form == "int8-dynamic":
        raise EngineError("int8-dynamic models (MatMulInteger/DynamicQuantizeLinear) are for the ORT CPU EP; "
                          "TensorRT reads INT8 from the int8-qdq artifact")
    options: dict[str, Any] = {
        "device_id": config.device_id,
        "trt_max_workspace_size": int(config.trt_max_workspace_size),
        "trt_fp16_enable": form == "fp16" or (form == "int8-qdq" and config.trt_int8_with_fp16),
        "trt_int8_enable": form == "int8-qdq",
    }
    if cache_dir is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=os.fspath(cache_dir))
    if timing_cache_dir is not None:
        options.update(trt_timing_cache_enable=True, trt_timing_cache_path=os.fspath(timing_cache_dir))
    if options["trt_fp16_enable"] and config.trt_layer_norm_fp32_fallback:
        options["trt_layer_norm_fp32_fallback"] = True
    if config.trt_builder_optimization_level is not None:
        options["trt_builder_optimization_level"] = config.trt_builder_optimization_level
    if any(not isinstance(d, int) for d in input_spec.shape):
        lo, opt, hi = config.batch_profile
        options["trt_profile_min_shapes"] = _profile_shapes(input_spec, lo)
        options["trt_profile_opt_shapes"] = _profile_shapes(input_spec, opt)
        options["trt_profile_max_shapes"] = _profile_shapes(input_spec, hi)
    have = version_tuple(ort_version)
    for name, since in _TRT_OPTION_MIN_ORT.items():
        if name in options and have < since:
            logger.info("onnxruntime %s has no TensorRT EP option %s (added in %d.%d); not set", ort_version, name, *since)
            del options[name]
    return options


def cuda_provider_options(config: OrtConfig) -> dict[str, Any]:
    """CUDA EP options: device, arena growth that does not over-reserve on 8 GB boards, optional cap."""
    options: dict[str, Any] = {"device_id": config.device_id,
                               "arena_extend_strategy": config.cuda_arena_extend_strategy}
    if config.gpu_mem_limit_bytes:
        options["gpu_mem_limit"] = int(config.gpu_mem_limit_bytes)
    return options


def provider_chain(provider: Provider, *, form: str, input_spec: Any, cache_dir: str | os.PathLike[str] | None,
                   timing_cache_dir: str | os.PathLike[str] | None, config: OrtConfig,
                   ort_version: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``providers`` list for ``InferenceSession``: the chosen EP first, then its fallbacks."""
    chain: list[tuple[str, dict[str, Any]]] = []
    if provider == "tensorrt":
        chain.append((PROVIDER_NAMES["tensorrt"], tensorrt_provider_options(
            form=form, input_spec=input_spec, cache_dir=cache_dir, timing_cache_dir=timing_cache_dir,
            config=config, ort_version=ort_version)))
    if provider in ("tensorrt", "cuda"):
        chain.append((PROVIDER_NAMES["cuda"], cuda_provider_options(config)))
    if provider not in PROVIDER_NAMES:
        raise EngineError(f"unknown ONNX Runtime provider {provider!r}; expected one of {list(PROVIDER_NAMES)}")
    chain.append((PROVIDER_NAMES["cpu"], {}))
    return chain


# -- cache keys and sidecars ----------------------------------------------------------------------
def cache_key(modality: Modality | str, artifact: Artifact, provider: Provider, config: OrtConfig) -> str:
    """Folder name of one ORT cache (see the module docstring)."""
    key = f"{Modality.parse(modality).value}.{artifact.form}.{artifact.sha256[:16]}.{provider}"
    return key if provider == "tensorrt" else f"{key}.{config.graph_optimization_level}"


def ort_cache_root(engines_root: str | os.PathLike[str], model: str) -> Path:
    return Path(engines_root) / model / "ort"


def cache_staleness(record: Mapping[str, Any], fingerprint: Mapping[str, Any],
                    folder: Path | None = None) -> str | None:
    """Why a cache folder with sidecar ``record`` cannot be used on this device, or None if it can."""
    provider = record.get("provider")
    if provider not in _DEVICE_KEYS:
        return f"sidecar names an unknown provider {provider!r}"
    for key in _DEVICE_KEYS[provider]:
        if record.get(key) != fingerprint.get(key):
            return f"{key} was {record.get(key)!r} when the cache was made, now {fingerprint.get(key)!r}"
    if folder is not None and provider != "tensorrt" and not (folder / OPTIMIZED).is_file():
        return f"{OPTIMIZED} is missing"
    return None


def read_sidecar(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / SIDECAR).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- the engine -----------------------------------------------------------------------------------
class OrtEngine(Engine):
    """One tower on an ONNX Runtime session. Build it with ``open_ort_engine``.

    Extra attributes: ``providers`` (the session's providers, first = where nodes run),
    ``session_seconds`` (session creation time), ``cache`` (folder, status: "hit", "created",
    "rebuilt: <why>" or "off").
    """

    def __init__(self, session: Any, *, modality: Modality | str, backend: str, artifact: Artifact,
                 tower: TowerRecord, reason: str, session_seconds: float, cache: dict[str, Any]) -> None:
        super().__init__(modality=modality, backend=backend, precision=artifact.precision, form=artifact.form,
                         input_spec=tower.input, output_spec=tower.output, reason=reason)
        self._session = session
        self.providers: list[str] = list(session.get_providers())
        self.session_seconds = session_seconds
        self.cache = cache
        names = [i.name for i in session.get_inputs()]
        if names != [tower.input.name]:
            raise EngineError(f"{artifact.file}: graph inputs are {names}, manifest says [{tower.input.name!r}]")
        self._output_name = tower.output.name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self._session.run([self._output_name], {self.input_spec.name: batch})[0]
        except Exception as exc:  # ORT raises its own untyped errors
            raise EngineError(f"{self!r}: onnxruntime failed on a batch of shape {batch.shape}: {exc}") from exc

    def _release(self) -> None:
        self._session = None  # ORT frees the session (and its device memory) with the last reference


def _session_options(ort: Any, config: OrtConfig, level: str) -> Any:
    return session_options(ort, threads=config.threads, level=level, spin_wait=config.spin_wait,
                           log_severity_level=config.log_severity_level)


def _create(ort: Any, path: Path, options: Any, providers: list[tuple[str, dict[str, Any]]]) -> Any:
    names = [name for name, _ in providers]
    try:
        with warnings.catch_warnings(record=True) as caught:  # "provider not available": reported by the caller
            warnings.simplefilter("always")
            session = ort.InferenceSession(os.fspath(path), options, providers=names,
                                           provider_options=[opts for _, opts in providers])
    except Exception as exc:  # ORT raises its own untyped errors
        raise EngineError(f"{path}: onnxruntime cannot create a session with {names}: {exc}") from exc
    for warning in caught:
        logger.debug("onnxruntime: %s", warning.message)
    return session


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:  # another process published the same cache first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _sidecar(bundle_dir: Path, model: str, modality: Modality, artifact: Artifact, provider: str,
             config: OrtConfig, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": "onnxruntime-cache", "provider": provider, "model": model, "modality": modality.value,
            "precision": artifact.precision, "form": artifact.form, "source_file": artifact.file,
            "source_sha256": artifact.sha256, "bundle": os.fspath(bundle_dir.resolve()),
            "graph_optimization_level": None if provider == "tensorrt" else config.graph_optimization_level,
            **{k: fingerprint.get(k) for k in ("onnxruntime", "tensorrt", "gpu", "compute_capability", "l4t", "machine", "cpu")},
            "created_unix": round(time.time(), 3)}


def open_ort_engine(bundle_dir: str | os.PathLike[str], model: str, modality: Modality | str, tower: TowerRecord,
                    artifact: Artifact, *, provider: Provider = "cpu", config: OrtConfig | None = None,
                    engines_root: str | os.PathLike[str] | None = "engines", reason: str = "",
                    strict: bool = False, fingerprint: Mapping[str, Any] | None = None,
                    refresh: bool = False, build: bool = True) -> OrtEngine:
    """An ``OrtEngine`` for one artifact (already checked against its sha256 by the caller).

    ``engines_root=None`` disables every cache; ``refresh`` rebuilds the cache even when it is
    valid; ``build=False`` refuses to build a TensorRT EP engine that is not cached yet (an
    optimised CPU/CUDA graph is always cheap enough to make). When the session ends up without the
    requested provider (e.g. CUDA libraries missing), ``strict`` raises EngineError; otherwise the
    engine runs where ORT placed it and ``reason``/``backend`` say so.
    """
    ort = require("onnxruntime", purpose="the ONNX Runtime backend")
    config = config or OrtConfig()
    modality = Modality.parse(modality)
    bundle_dir = Path(bundle_dir)
    source = bundle_dir / artifact.file
    fingerprint = fingerprint or cached_fingerprint()
    cache: dict[str, Any] = {"status": "off", "folder": None}
    folder = tmp = None
    if engines_root is not None and (provider == "tensorrt" or config.cache_optimized_model):
        root = ort_cache_root(engines_root, model)
        folder = root / cache_key(modality, artifact, provider, config)
        cache["folder"] = os.fspath(folder)
        record = read_sidecar(folder) if folder.is_dir() else None
        stale = None if record is None else cache_staleness(record, fingerprint, folder)
        if refresh and record is not None:
            stale = "refresh requested"
        if record is not None and stale is None:
            cache["status"] = "hit"
        else:
            if provider == "tensorrt" and not build:
                raise EngineError(f"no usable TensorRT EP engine cache in {folder} ({stale or 'none built yet'}) "
                                  "and build=False; run `edgebind build` first")
            cache["status"] = "created" if record is None else f"rebuilt: {stale}"
            root.mkdir(parents=True, exist_ok=True)
            if provider == "tensorrt":
                # ORT writes engines into this folder during the session's life; the sidecar, written
                # last, marks it complete (a folder without one is rebuilt).
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            else:
                tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=root))
                os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes it 0700; the published cache is not private
    work = None if folder is None else (tmp if tmp is not None else folder).resolve()
    timing = None if folder is None else (folder.parent / "trt-timing").resolve()
    if provider == "tensorrt" and timing is not None:
        timing.mkdir(parents=True, exist_ok=True)
    chain = provider_chain(provider, form=artifact.form, input_spec=tower.input, cache_dir=work,
                           timing_cache_dir=timing, config=config, ort_version=ort.__version__)
    level = config.graph_optimization_level
    path = source
    options = _session_options(ort, config, level)
    if provider != "tensorrt" and folder is not None:
        if cache["status"] == "hit":
            path = folder / OPTIMIZED
        else:
            options.optimized_model_filepath = os.fspath(work / OPTIMIZED)  # type: ignore[operator]
            if artifact.data_file is not None or artifact.size_bytes > _EXTERNAL_DATA_MIN_BYTES:
                options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                 f"{OPTIMIZED}.data")
                options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                                 "1024")
    start = time.perf_counter()
    try:
        session = _create(ort, path, options, chain)
    except EngineError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if path == source or folder is None:
            raise
        # A cached optimised model that no longer loads: drop it and start again from the bundle.
        logger.warning("discarding the unusable cache %s (%s)", folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return open_ort_engine(bundle_dir, model, modality, tower, artifact, provider=provider, config=config,
                               engines_root=engines_root, reason=reason, strict=strict, fingerprint=fingerprint,
                               build=build)
    seconds = time.perf_counter() - start
    if folder is not None and cache["status"] != "hit":
        sidecar = _sidecar(bundle_dir, model, modality, artifact, provider, config, fingerprint)
        atomic_write_json((tmp or folder) / SIDECAR, sidecar)
        if tmp is not None:
            _publish(tmp, folder)
    actual = session.get_providers()[0]
    backend = BACKEND_OF[provider]
    if actual != PROVIDER_NAMES[provider]:
        why = (f"onnxruntime did not enable {PROVIDER_NAMES[provider]} (session providers: {session.get_providers()}; "
               "its libraries are probably missing: run with -v for ORT's log)")
        if strict:
            raise EngineError(f"{source}: {why}")
        logger.warning("%s %s: %s; running on %s", modality.value, artifact.form, why, actual)
        backend = next((b for p, b in BACKEND_OF.items() if PROVIDER_NAMES[p] == actual), "onnxruntime-cpu")
        reason = f"{reason}; fell back to {backend}: {why}" if reason else f"fell back to {backend}: {why}"
    logger.debug("%s %s on %s: session in %.3f s (cache %s)", modality.value, artifact.form, backend, seconds,
                cache["status"])
    return OrtEngine(session, modality=modality, backend=backend, artifact=artifact, tower=tower, reason=reason,
                     session_seconds=seconds, cache=cache)
