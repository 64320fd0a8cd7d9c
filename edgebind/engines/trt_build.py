"""TensorRT engine builder: the export stage's ONNX -> a cached plan, on TensorRT 8.5, 10.x and 11.x.

What is built, per requested precision and TensorRT version (``resolve_recipe``; capabilities are
probed with ``hasattr`` on the real module, the version string only labels them):

=============  ===============================  ===============================  ==========================
precision      8.5 / 8.6 (JetPack 5.1 / 6.0)    10.x (JetPack 6.1+)              11.x (flags removed)
=============  ===============================  ===============================  ==========================
fp32           FP32 ONNX, no flags              FP32 ONNX, no flags              FP32 ONNX, strongly typed
fp16           FP32 ONNX + BuilderFlag.FP16     same (or fp16_mode=              FP16 ONNX, strongly typed
                                                "strongly-typed": FP16 ONNX)
int8 (qdq)     Q/DQ ONNX + INT8 + FP16 flags,   same                             Q/DQ ONNX, strongly typed
               no calibrator
int8           FP32 ONNX + INT8 + FP16 +        same (deprecated in 10.1)        refused: use the Q/DQ ONNX
(calibrator)   IInt8EntropyCalibrator2
=============  ===============================  ===============================  ==========================

Networks get ``EXPLICIT_BATCH`` on 8.x (the ONNX parser requires it; deprecated and ignored in 10,
removed in 11), ``STRONGLY_TYPED`` where asked on 10.x (always on in 11). The ONNX is parsed with
``OnnxParser.parse_from_file`` so external data resolves next to the file. One optimisation profile
covers the batch range (min/opt/max); the workspace pool is limited (``default_workspace_bytes``);
``builder_optimization_level`` is set where the version has it (8.6+); the timing cache
``engines/<model>/timing.cache`` is loaded, reused and merged back under a lock.

``ensure_engine`` is what the runtime and ``edgebind build`` call: it derives the cache key for this
device, reuses a valid plan, or builds (or, with ``build=False``, reports why it cannot).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from .._config import ConfigMixin
from .._io import sha256_file
from .._lazy import require
from ..errors import ConfigError, EngineError
from ..modality import Modality
from . import cache as C
from .cuda_buffers import CUDA_LIBRARIES, CudaRuntime, default_workspace_bytes, meminfo, open_cuda
from .trt_calibrator import attach_calibrator, calibration_fingerprint, calibrator_supported

logger = logging.getLogger(__name__)

FP16_MODES = ("auto", "flag", "strongly-typed")
INT8_MODES = ("qdq", "calibrator")


@dataclasses.dataclass(frozen=True)
class TrtBuildConfig(ConfigMixin):
    """How engines are built. ``batch_profile`` is (min, opt, max) batch size; ``workspace_mb`` None
    means ``default_workspace_bytes``; ``cuda`` picks the CUDA binding ("auto", "cuda-python", "pycuda")."""

    batch_profile: tuple[int, int, int] = (1, 1, 8)
    workspace_mb: int | None = None
    builder_optimization_level: int | None = None
    fp16_mode: str = "auto"
    int8_mode: str = "qdq"
    calibration: str | None = None
    calibration_batch_size: int = 8
    calibration_max_batches: int | None = None
    timing_cache: bool = True
    cuda: str = "auto"
    device: int = 0

    def __post_init__(self) -> None:
        lo, opt, hi = self.batch_profile
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"batch_profile: expected 1 <= min <= opt <= max, got {list(self.batch_profile)}")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise ConfigError(f"workspace_mb: expected a positive number of MiB, got {self.workspace_mb}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise ConfigError(f"builder_optimization_level: expected 0..5 (TensorRT default 3), got {level}")
        for name, allowed in (("fp16_mode", FP16_MODES), ("int8_mode", INT8_MODES), ("cuda", CUDA_LIBRARIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: expected one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.calibration_batch_size < 1:
            raise ConfigError(f"calibration_batch_size: expected >= 1, got {self.calibration_batch_size}")


@dataclasses.dataclass(frozen=True)
class TrtCapabilities:
    """What the installed TensorRT offers, probed on the module rather than inferred from its version."""

    version: str
    explicit_batch_flag: bool     # NetworkDefinitionCreationFlag.EXPLICIT_BATCH must be passed (8.x)
    strongly_typed: bool          # strongly typed networks exist (10.x flag; 11.x always)
    always_strongly_typed: bool   # 11.x: precision builder flags are gone
    fp16_flag: bool
    int8_flag: bool
    optimization_level: bool      # IBuilderConfig.builder_optimization_level (8.6+)
    calibrator: bool              # IInt8EntropyCalibrator2 + IBuilderConfig.int8_calibrator (<= 10.x)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def probe_capabilities(trt: Any) -> TrtCapabilities:
    version = str(trt.__version__)
    net_flags, flags = trt.NetworkDefinitionCreationFlag, trt.BuilderFlag
    always = not hasattr(flags, "FP16")
    return TrtCapabilities(
        version=version,
        explicit_batch_flag=int(version.split(".")[0]) < 10 and hasattr(net_flags, "EXPLICIT_BATCH"),
        strongly_typed=always or hasattr(net_flags, "STRONGLY_TYPED"),
        always_strongly_typed=always,
        fp16_flag=hasattr(flags, "FP16"),
        int8_flag=hasattr(flags, "INT8"),
        optimization_level=hasattr(trt.IBuilderConfig, "builder_optimization_level"),
        calibrator=calibrator_supported(trt),
    )


@dataclasses.dataclass(frozen=True)
class BuildRecipe:
    """The resolved plan for one engine: which ONNX, which mode, which builder flags."""

    precision: str
    form: str             # engine form: fp32, fp16, int8-qdq, int8-calib
    source_precision: str
    source_form: str      # the bundle artifact parsed: fp32, fp16, int8-qdq
    build_mode: str       # fp32, fp16-flag, strongly-typed, int8-qdq-flags, int8-calibrator
    why: str


_MODE_FLAGS = {"fp32": (), "fp16-flag": ("FP16",), "strongly-typed": (), "int8-qdq-flags": ("INT8", "FP16"),
               "int8-calibrator": ("INT8", "FP16")}


def resolve_recipe(precision: str, caps: TrtCapabilities, config: TrtBuildConfig, available: set[tuple[str, str]],
                   *, prefer_fp16_source: bool = False) -> BuildRecipe:
    """Choose source ONNX and build mode for ``precision`` on this TensorRT (see the module table)."""
    v = caps.version

    def need(prec: str, form: str, why: str) -> None:
        if (prec, form) not in available:
            have = ", ".join(sorted(f for _, f in available)) or "none"
            raise EngineError(f"{why} needs the bundle's {form} ONNX, which this tower lacks (it has {have}); "
                              f"re-export with `edgebind export --precision {prec}`")

    if precision == "fp32":
        need("fp32", "fp32", "an FP32 engine")
        mode = "strongly-typed" if caps.always_strongly_typed else "fp32"
        return BuildRecipe("fp32", "fp32", "fp32", "fp32", mode, f"TensorRT {v}: FP32 ONNX, no precision flags")
    if precision == "fp16":
        mode = config.fp16_mode
        if mode == "auto":
            mode = "flag" if caps.fp16_flag else "strongly-typed"
        if mode == "flag":
            if not caps.fp16_flag:
                raise EngineError(f"TensorRT {v} has no BuilderFlag.FP16 (removed in 11.0); use fp16_mode='strongly-typed', "
                                  "which builds the bundle's FP16 ONNX")
            src = "fp16" if prefer_fp16_source and ("fp16", "fp16") in available else "fp32"
            need(src, src, "an FP16 engine")
            why = f"TensorRT {v}: BuilderFlag.FP16 on the {src.upper()} ONNX"
            if src == "fp16":
                why += " (device RAM is under twice the FP32 model: the FP16 ONNX halves the build's memory)"
            return BuildRecipe("fp16", "fp16", src, src, "fp16-flag", why)
        if not caps.strongly_typed:
            raise EngineError(f"TensorRT {v} has no strongly typed networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED "
                              "arrived with 10.x); use fp16_mode='flag'")
        need("fp16", "fp16", "a strongly typed FP16 engine")
        return BuildRecipe("fp16", "fp16", "fp16", "fp16", "strongly-typed",
                           f"TensorRT {v}: strongly typed network from the pre-converted FP16 ONNX")
    if precision != "int8":
        raise ConfigError(f"precision: expected fp32, fp16 or int8, got {precision!r}")
    if config.int8_mode == "calibrator":
        if not caps.calibrator:
            raise EngineError(f"TensorRT {v} removed implicit INT8 calibration (IInt8EntropyCalibrator2, "
                              "IBuilderConfig.int8_calibrator) in 11.0; use int8_mode='qdq' (the bundle's Q/DQ ONNX)")
        if config.calibration is None:
            raise ConfigError("calibration: int8_mode='calibrator' needs a calibration set folder "
                              "(e.g. calibration/default from `edgebind export` or `edgebind calibrate`)")
        need("fp32", "fp32", "implicit INT8 calibration")
        return BuildRecipe("int8", "int8-calib", "fp32", "fp32", "int8-calibrator",
                           f"TensorRT {v}: legacy implicit INT8 (entropy calibrator) on the FP32 ONNX, FP16 fallback")
    need("int8", "int8-qdq", "an INT8 engine")
    if caps.int8_flag:
        return BuildRecipe("int8", "int8-qdq", "int8", "int8-qdq", "int8-qdq-flags",
                           f"TensorRT {v}: Q/DQ ONNX with BuilderFlag.INT8 (+FP16 for unquantized layers), no calibrator")
    return BuildRecipe("int8", "int8-qdq", "int8", "int8-qdq", "strongly-typed",
                       f"TensorRT {v}: Q/DQ ONNX as a strongly typed network")


@dataclasses.dataclass
class BuildReport:
    """What one build did (also stored as the sidecar's ``build`` section)."""

    plan_path: Path
    key: C.EngineCacheKey
    onnx_path: Path
    seconds: float
    plan_bytes: int
    build_mode: str
    builder_flags: list[str]
    network_flags: list[str]
    workspace_bytes: int
    builder_optimization_level: int | None
    timing_cache: dict[str, Any]
    calibration_cache: str | None
    cuda: str
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(plan_path=os.fspath(self.plan_path), onnx_path=os.fspath(self.onnx_path), key=self.key.to_dict())
        return out


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to Python logging and keeps warnings/errors for reports."""
    base = trt.ILogger

    class _Logger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity)).rsplit(".", 1)[-1]
            if name == "VERBOSE":
                return
            level = {"INTERNAL_ERROR": logging.ERROR, "ERROR": logging.ERROR, "WARNING": logging.WARNING}.get(name, logging.DEBUG)
            logger.log(level, "TensorRT: %s", msg)
            if level >= logging.WARNING:
                self.messages.append((name, str(msg)))

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s != "WARNING"]

        def warnings(self) -> list[str]:
            return [m for s, m in self.messages if s == "WARNING"]

    return _Logger()


def build_engine(onnx_path: str | os.PathLike[str], plan_path: str | os.PathLike[str], config: TrtBuildConfig,
                 key: C.EngineCacheKey, *, cuda: CudaRuntime | None = None) -> BuildReport:
    """Build the plan for ``key`` from ``onnx_path`` and publish it (plan, then sidecar) at ``plan_path``."""
    trt = require("tensorrt", extra="tensorrt", purpose="building TensorRT engines")
    caps = probe_capabilities(trt)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if key.tensorrt != caps.version:
        raise EngineError(f"cache key is for TensorRT {key.tensorrt}, but {caps.version} is installed")
    if key.build_mode not in _MODE_FLAGS:
        raise EngineError(f"unknown build mode {key.build_mode!r}; expected one of {list(_MODE_FLAGS)}")
    if not onnx_path.is_file():
        raise EngineError(f"{onnx_path}: ONNX file missing")
    if sha256_file(onnx_path) != key.onnx_sha256:
        raise EngineError(f"{onnx_path}: sha256 differs from the manifest's; the bundle changed, re-open it")
    cuda = cuda or open_cuda(config.cuda, config.device)
    notes: list[str] = []
    info = cuda.device_info()
    model_bytes = onnx_path.stat().st_size + sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + ".data"))
    available = meminfo().get("MemAvailable")
    if available is not None and available < 2 * model_bytes:
        notes.append(f"{onnx_path.name} is {model_bytes / 2**20:.0f} MiB but only {available / 2**20:.0f} MiB RAM is "
                     "available; TensorRT needs about twice the model size to build. On 8 GB boards build from the FP16 "
                     "ONNX (fp16_mode='strongly-typed') with a small workspace (workspace_mb=512) and stop other processes")
    workspace = config.workspace_mb * 2**20 if config.workspace_mb else default_workspace_bytes(info.free_bytes, info.total_bytes)

    trt_logger = make_logger(trt)
    builder = trt.Builder(trt_logger)
    net_flags: list[str] = []
    if caps.explicit_batch_flag:
        net_flags.append("EXPLICIT_BATCH")
    if key.build_mode == "strongly-typed":
        if not caps.strongly_typed:
            raise EngineError(f"TensorRT {caps.version} cannot build strongly typed networks")
        if not caps.always_strongly_typed:
            net_flags.append("STRONGLY_TYPED")
    flags_value = 0
    for name in net_flags:
        flags_value |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags_value)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or trt_logger.errors()
        raise EngineError(f"{onnx_path}: TensorRT {caps.version} cannot parse it: " + "; ".join(errors[:5]))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [key.input_name]:
        raise EngineError(f"{onnx_path}: network inputs {[t.name for t in inputs]}, expected [{key.input_name!r}]")

    trt_config = builder.create_builder_config()
    trt_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    level = config.builder_optimization_level
    if level is not None:
        if caps.optimization_level:
            trt_config.builder_optimization_level = level
        else:
            notes.append(f"TensorRT {caps.version} has no builder_optimization_level (added in 8.6); {level} ignored")
            level = None
    builder_flags = list(_MODE_FLAGS[key.build_mode])
    for name in builder_flags:
        if not hasattr(trt.BuilderFlag, name):
            raise EngineError(f"TensorRT {caps.version} has no BuilderFlag.{name}; build mode {key.build_mode} is not possible")
        trt_config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    profile.set_shape(key.input_name, key.profile_min, key.profile_opt, key.profile_max)
    trt_config.add_optimization_profile(profile)

    calibrator = None
    calib_cache = None
    timing: dict[str, Any] = {"path": None}
    try:
        if key.build_mode == "int8-calibrator":
            calibrator, calib_cache = attach_calibrator(trt, trt_config, builder, cuda, key, inputs[0], plan_path.parent,
                                                          config.calibration, config.calibration_batch_size,
                                                          config.calibration_max_batches)
        if config.timing_cache:
            tc_path = C.timing_cache_path(plan_path.parent)
            _cache, read_blob = C.load_timing_cache(trt_config, tc_path, notes)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, trt_config)
        seconds = time.perf_counter() - start
        if serialized is None:
            errors = trt_logger.errors()
            raise EngineError(
                f"TensorRT {caps.version} failed to build {plan_path.name} ({key.build_mode}, workspace "
                f"{workspace >> 20} MiB): " + ("; ".join(errors[-5:]) or "no error message")
                + ". Out-of-memory on Jetson: lower workspace_mb, build from the FP16 ONNX, free RAM or add swap"
            )
        if config.timing_cache:
            try:
                timing = C.save_timing_cache(trt_config, tc_path, read_blob)
            except OSError as exc:
                notes.append(f"timing cache not saved: {exc}")
        report = BuildReport(
            plan_path=plan_path, key=key, onnx_path=onnx_path, seconds=round(seconds, 3), plan_bytes=int(serialized.nbytes),
            build_mode=key.build_mode, builder_flags=builder_flags, network_flags=net_flags, workspace_bytes=workspace,
            builder_optimization_level=level, timing_cache=timing,
            calibration_cache=None if calib_cache is None else os.fspath(calib_cache), cuda=cuda.library,
            warnings=notes + trt_logger.warnings(),
        )
        build = report.to_dict()
        build.pop("key"), build.pop("plan_path")
        C.publish_plan(plan_path, serialized, key, build)
    finally:
        if calibrator is not None:
            calibrator.close()
    for note in notes:
        logger.warning("%s", note)
    logger.info("built %s in %.1f s (%s, %d MiB)", plan_path.name, seconds, key.build_mode, report.plan_bytes >> 20)
    return report


def ensure_engine(bundle_dir: str | os.PathLike[str], manifest: Any, modality: str | Modality, precision: str, *,
                  engines_root: str | os.PathLike[str] = "engines", build: bool = True,
                  config: TrtBuildConfig | None = None) -> tuple[Path, C.EngineCacheKey, bool]:
    """The plan for one tower on this device: reused when its sidecar matches, else built.

    Returns ``(plan_path, key, built)``. With ``build=False`` a missing or stale plan raises
    EngineError listing why. A per-plan lock makes concurrent starts wait for one build.
    """
    plan, key, stale = ensure_engine_status(bundle_dir, manifest, modality, precision, engines_root=engines_root,
                                            build=build, config=config)
    return plan, key, stale is not None


def ensure_engine_status(bundle_dir: str | os.PathLike[str], manifest: Any, modality: str | Modality, precision: str, *,
                         engines_root: str | os.PathLike[str] = "engines", build: bool = True,
                         config: TrtBuildConfig | None = None) -> tuple[Path, C.EngineCacheKey, tuple[str, ...] | None]:
    """``ensure_engine`` returning, instead of ``built``, why it built (None when the cache was valid)."""
    from ..bundle.manifest import load_manifest

    config = config or TrtBuildConfig()
    trt = require("tensorrt", extra="tensorrt", purpose="TensorRT engines")
    caps = probe_capabilities(trt)
    cuda = open_cuda(config.cuda, config.device)
    env = C.detect_environment(trt, cuda)
    bundle_dir = Path(bundle_dir)
    manifest = manifest if manifest is not None else load_manifest(bundle_dir)
    m = Modality.parse(modality)
    tower = manifest.tower(m)
    available = {(a.precision, a.form) for a in tower.artifacts}
    prefer_fp16 = False
    if precision == "fp16" and ("fp32", "fp32") in available:
        fp32 = tower.artifact("fp32", "fp32")
        total = meminfo().get("MemTotal")
        prefer_fp16 = total is not None and total < 2 * (fp32.size_bytes + (fp32.data_size_bytes or 0))
    recipe = resolve_recipe(precision, caps, config, available, prefer_fp16_source=prefer_fp16)
    artifact = tower.artifact(recipe.source_precision, recipe.source_form)
    hashed: dict[str, Any] = {"form": recipe.form, "build_mode": recipe.build_mode, "source_form": recipe.source_form,
                              "artifact_recipe": artifact.provenance.get("recipe")}
    if recipe.build_mode == "int8-calibrator":
        from ..calibration import CalibrationSet

        hashed["calibration"] = calibration_fingerprint(CalibrationSet.open(config.calibration), m.value)  # type: ignore[arg-type]
    lo, opt, hi = config.batch_profile
    dims = tower.input.shape[1:]
    dynamic = [d for d in dims if not isinstance(d, int)]
    if dynamic:
        raise EngineError(f"{m.value} input {tower.input.name}: dynamic non-batch dims {dynamic} are not supported")
    key = C.EngineCacheKey(
        model=manifest.model, modality=m.value, precision=recipe.precision, form=recipe.form, build_mode=recipe.build_mode,
        source_file=artifact.file, onnx_sha256=artifact.sha256, onnx_data_sha256=artifact.data_sha256,
        recipe_sha256=C.recipe_sha256(hashed), input_name=tower.input.name,
        profile_min=(lo, *dims), profile_opt=(opt, *dims), profile_max=(hi, *dims),  # type: ignore[arg-type]
        tensorrt=env.tensorrt, gpu_name=env.gpu_name, compute_capability=env.compute_capability, l4t=env.l4t,
    )
    plan = C.engine_cache_dir(engines_root, manifest.model) / key.plan_name()
    with C.file_lock(f"{plan}.lock"):
        C.remove_leftover_temps(plan)
        status = C.check_plan(plan, key)
        if status.valid:
            logger.debug("reusing %s", plan)
            return plan, key, None
        if not build:
            raise EngineError(f"no usable TensorRT engine for {m.value} {recipe.form} ({plan}): {'; '.join(status.reasons)}. "
                              f"Build it on this device with `edgebind build {bundle_dir}` or open with build=True")
        logger.info("building %s: %s [%s]", plan.name, recipe.why, "; ".join(status.reasons))
        build_engine(bundle_dir / artifact.file, plan, config, key, cuda=cuda)
    return plan, key, status.reasons
