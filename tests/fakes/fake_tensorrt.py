"""Fake ``tensorrt`` modules for TensorRT 8.5, 10.x and 11.x: the exact API surface edgebind uses.

``make_tensorrt(version, gpu)`` returns a module that mirrors the real Python bindings' names,
signatures and failure behaviour (None / False returns plus logger messages, as pybind-wrapped
TensorRT does), with the differences between versions below. Every call is appended to
``gpu.calls`` (shared with the fake CUDA) as ``("Class.method", *args)``. "Engines" are real
computations: a plan embeds the parsed ONNX, and ``execute_async_v3`` runs it with onnxruntime on
the data found at the tensor addresses in fake device memory, so outputs compare with ORT.

Version differences mirrored (sources: TensorRT Python API docs per release, the 8.x->10.x and
10.x->11.x migration guides' "removed Python APIs" lists, edge.md sections 2.2-2.5):

=================================================  ==============  ================  =================
API                                                8.5             10.x              11.x
=================================================  ==============  ================  =================
NetworkDefinitionCreationFlag.EXPLICIT_BATCH       required (*)    deprecated, no-op removed
NetworkDefinitionCreationFlag.STRONGLY_TYPED       absent          present           deprecated, no-op
                                                                                     (always strongly typed)
BuilderFlag.FP16 / INT8                            present         present           removed
IBuilderConfig.builder_optimization_level          absent (8.6+)   present           present
IBuilderConfig.int8_calibrator,                    present         present (depr.    removed
set_calibration_profile, IInt8EntropyCalibrator2                   since 10.1)
Builder.build_engine                               present (depr.) removed           removed
FP16/INT8 flag on a strongly typed network         n/a             build error       n/a (no flags)
Q/DQ ONNX on a weakly typed network w/o INT8 flag  build error     build error       n/a
int64 ONNX inputs                                  cast to INT32   INT64 kept        INT64 kept
=================================================  ==============  ================  =================
(*) the 8.x ONNX parser fails on an implicit-batch network.

Common to all three (present since 8.5): ``Logger``/``ILogger`` (subclass + ``log(severity, msg)``),
``Builder(logger).create_network(flags)``, ``create_builder_config()``,
``create_optimization_profile()``, ``build_serialized_network(network, config) -> IHostMemory | None``;
``OnnxParser(network, logger).parse_from_file(path) -> bool`` (external data resolved next to the
file), ``num_errors``, ``get_error(i)``; ``INetworkDefinition.num_inputs/get_input(i)`` (``ITensor``
``.name/.shape/.dtype``); ``IBuilderConfig.set_flag``, ``set_memory_pool_limit(MemoryPoolType,
bytes)``, ``add_optimization_profile``, ``create_timing_cache(bytes)``, ``set_timing_cache(cache,
ignore_mismatch) -> bool``, ``get_timing_cache()``; ``ITimingCache.serialize()``, ``combine(other,
ignore_mismatch) -> bool``; ``IOptimizationProfile.set_shape(name, min, opt, max)``;
``Runtime(logger).deserialize_cuda_engine(bytes) -> ICudaEngine | None`` (None + an error log for a
foreign version tag, another GPU architecture or garbage); ``ICudaEngine.num_io_tensors``,
``get_tensor_name(i)``, ``get_tensor_mode``, ``get_tensor_dtype``, ``get_tensor_shape``,
``get_tensor_profile_shape``, ``create_execution_context()``; ``IExecutionContext.set_input_shape ->
bool``, ``get_tensor_shape``, ``set_tensor_address -> bool``, ``execute_async_v3(stream_handle) ->
bool`` (queues work on the stream); ``nptype``; ``TensorIOMode``; ``DataType``; ``MemoryPoolType``.
"""

from __future__ import annotations

import enum
import importlib.machinery
import json
import os
import types
from typing import Any

import numpy as np

from .fake_cuda import FakeGpu

VERSIONS = {"8.5": "8.5.2.2", "8.6": "8.6.2.3", "10": "10.3.0.30", "11": "11.4.1.2"}
PLAN_MAGIC = b"FAKEPLAN"
TIMING_MAGIC = b"FAKETC1\n"


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class HostMemory(bytes):
    """IHostMemory: a buffer (here bytes) with ``nbytes``."""

    @property
    def nbytes(self) -> int:
        return len(self)


def make_tensorrt(version: str, gpu: FakeGpu) -> types.ModuleType:
    """A fake ``tensorrt`` module for ``version`` ("8.5.2.2", "10.3.0.30", "11.4.1.2"; "8.5"/"10"/"11" ok)."""
    version = VERSIONS.get(version, version)
    major, minor = (int(x) for x in version.split(".")[:2])
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", loader=None)
    trt.__version__ = version
    log = gpu.calls

    dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5}
    if major >= 10:
        dtypes.update(BF16=7, INT64=8)
    DataType = enum.IntEnum("DataType", dtypes)
    np_of = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
             "UINT8": np.uint8, "INT64": np.int64}

    def nptype(dt: Any) -> type:
        return np_of[DataType(dt).name]

    net_flag_names = ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"] if major < 10 else (
        ["EXPLICIT_BATCH", "STRONGLY_TYPED"] if major == 10 else ["STRONGLY_TYPED"])
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {n: i for i, n in enumerate(net_flag_names)})
    builder_flag_names = (["FP16", "INT8"] if major < 11 else []) + ["DEBUG", "GPU_FALLBACK", "REFIT", "TF32", "VERSION_COMPATIBLE"]
    BuilderFlag = enum.IntEnum("BuilderFlag", {n: i for i, n in enumerate(builder_flag_names)})
    always_strong = major >= 11

    class ILogger:
        Severity = Severity
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(Severity)

        def __init__(self) -> None:
            pass

        def log(self, severity: Severity, msg: str) -> None:  # pragma: no cover - overridden
            pass

    class Logger(ILogger):
        def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
            self.min_severity = min_severity

    def emit(logger: Any, severity: Severity, msg: str) -> None:
        log.append(("log", severity.name, msg))
        logger.log(severity, msg)

    class ParserError:
        def __init__(self, text: str):
            self._text = text

        def desc(self) -> str:
            return self._text

        def __str__(self) -> str:
            return f"In node -1 (parse): {self._text}"

    class ITensor:
        def __init__(self, name: str, shape: tuple[int, ...], dtype: Any):
            self.name, self.shape, self.dtype = name, shape, dtype

    class INetworkDefinition:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.onnx: bytes | None = None
            self.onnx_input_dtypes: dict[str, str] = {}
            self.has_qdq = False

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, i: int) -> ITensor:
            return self.inputs[i]

        def get_output(self, i: int) -> ITensor:
            return self.outputs[i]

        def get_flag(self, flag: Any) -> bool:
            return bool(self.flags & (1 << int(flag)))

        @property
        def strongly_typed(self) -> bool:
            return always_strong or ("STRONGLY_TYPED" in NetworkDefinitionCreationFlag.__members__
                                     and self.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED))

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Any):
            self.network, self.logger, self.errors = network, logger, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

        def _fail(self, text: str) -> bool:
            self.errors.append(ParserError(text))
            emit(self.logger, Severity.ERROR, text)
            return False

        def parse_from_file(self, path: str) -> bool:
            import onnx

            log.append(("OnnxParser.parse_from_file", os.path.basename(path)))
            net = self.network
            if major < 10 and not net.get_flag(NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
                return self._fail("Network must have explicit batch dimension (create it with EXPLICIT_BATCH)")
            if not os.path.isfile(path):
                return self._fail(f"Failed to open file: {path}")
            model = onnx.load(path, load_external_data=False)
            folder = os.path.dirname(os.path.abspath(path))
            for init in model.graph.initializer:
                for entry in init.external_data:
                    if entry.key == "location" and not os.path.isfile(os.path.join(folder, entry.value)):
                        return self._fail(f"Failed to open external data file {entry.value} next to {path}")
            onnx.load_external_data_for_model(model, folder)
            init_names = {i.name for i in model.graph.initializer}
            for vi in model.graph.input:
                if vi.name in init_names:
                    continue
                elem = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
                name = {np.dtype(np.float32): "FLOAT", np.dtype(np.float16): "HALF", np.dtype(np.int64): "INT64",
                        np.dtype(np.int32): "INT32"}[np.dtype(elem)]
                net.onnx_input_dtypes[vi.name] = np.dtype(elem).name
                if name == "INT64" and major < 10:
                    emit(self.logger, Severity.WARNING, "Your ONNX model has been generated with INT64 weights, while "
                         "TensorRT does not natively support INT64. Attempting to cast down to INT32.")
                    name = "INT32"
                net.inputs.append(ITensor(vi.name, dims, DataType[name]))
            for vi in model.graph.output:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
                net.outputs.append(ITensor(vi.name, dims, DataType.FLOAT))
            net.has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
            net.nodes = [f"{n.op_type}:{n.name}" for n in model.graph.node]
            net.onnx = model.SerializeToString()
            return True

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
            log.append(("IOptimizationProfile.set_shape", name, tuple(min), tuple(opt), tuple(max)))
            if not all(a <= b <= c for a, b, c in zip(min, opt, max)) or not len(min) == len(opt) == len(max):
                raise ValueError(f"invalid profile for {name}: {min} {opt} {max}")
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

        def get_shape(self, name: str) -> list[tuple[int, ...]]:
            return list(self.shapes[name])

    class ITimingCache:
        def __init__(self, header: dict[str, Any], entries: dict[str, float]):
            self.header, self.entries = header, dict(entries)

        def serialize(self) -> HostMemory:
            log.append(("ITimingCache.serialize", len(self.entries)))
            return HostMemory(TIMING_MAGIC + json.dumps({**self.header, "entries": self.entries}).encode())

        def combine(self, other: "ITimingCache", ignore_mismatch: bool) -> bool:
            log.append(("ITimingCache.combine", len(other.entries), ignore_mismatch))
            if other.header != self.header and not ignore_mismatch:
                return False
            for k, v in other.entries.items():
                self.entries.setdefault(k, v)
            return True

        def reset(self) -> bool:
            self.entries.clear()
            return True

    header_here = {"trt": version, "cc": list(gpu.cc)}

    config_slots = ["_flags", "_pools", "_profiles", "_timing", "_calibrator", "_calib_profile", "_level"]

    def _set_flag(self, flag: Any) -> None:
        log.append(("IBuilderConfig.set_flag", BuilderFlag(flag).name))
        self._flags.add(BuilderFlag(flag).name)

    def _config_init(self) -> None:
        self._flags, self._pools, self._profiles = set(), {}, []
        self._timing, self._calibrator, self._calib_profile, self._level = None, None, None, 3

    def _create_timing_cache(self, blob: Any) -> ITimingCache | None:
        blob = bytes(blob)
        log.append(("IBuilderConfig.create_timing_cache", len(blob)))
        if not blob:
            return ITimingCache(dict(header_here), {})
        if not blob.startswith(TIMING_MAGIC):
            return None
        data = json.loads(blob[len(TIMING_MAGIC):])
        entries = data.pop("entries")
        return ITimingCache(data, entries)

    def _set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        log.append(("IBuilderConfig.set_timing_cache", len(cache.entries), ignore_mismatch))
        if cache.header != header_here and not ignore_mismatch:
            return False
        self._timing = cache
        return True

    methods: dict[str, Any] = {
        "__slots__": config_slots,
        "__init__": _config_init,
        "set_flag": _set_flag,
        "get_flag": lambda self, flag: BuilderFlag(flag).name in self._flags,
        "clear_flag": lambda self, flag: self._flags.discard(BuilderFlag(flag).name),
        "set_memory_pool_limit": lambda self, pool, size: (
            log.append(("IBuilderConfig.set_memory_pool_limit", MemoryPoolType(pool).name, int(size))),
            self._pools.__setitem__(MemoryPoolType(pool).name, int(size)))[-1],
        "get_memory_pool_limit": lambda self, pool: self._pools.get(MemoryPoolType(pool).name, gpu.total),
        "add_optimization_profile": lambda self, p: (
            log.append(("IBuilderConfig.add_optimization_profile",)), self._profiles.append(p), len(self._profiles) - 1)[-1],
        "create_timing_cache": _create_timing_cache,
        "set_timing_cache": _set_timing_cache,
        "get_timing_cache": lambda self: self._timing,
    }
    if (major, minor) >= (8, 6):
        def _set_level(self, value: int) -> None:
            log.append(("IBuilderConfig.builder_optimization_level", int(value)))
            self._level = int(value)
        methods["builder_optimization_level"] = property(lambda self: self._level, _set_level)
    if major < 11:
        def _set_calibrator(self, value: Any) -> None:
            log.append(("IBuilderConfig.int8_calibrator", type(value).__name__))
            self._calibrator = value
        methods["int8_calibrator"] = property(lambda self: self._calibrator, _set_calibrator)

        def _set_calib_profile(self, profile: Any) -> bool:
            log.append(("IBuilderConfig.set_calibration_profile", dict(profile.shapes)))
            self._calib_profile = profile
            return True
        methods["set_calibration_profile"] = _set_calib_profile
        methods["get_calibration_profile"] = lambda self: self._calib_profile
    IBuilderConfig = type("IBuilderConfig", (), methods)

    class Builder:
        def __init__(self, logger: Any):
            self.logger = logger
            log.append(("Builder",))
            if major < 11:
                self.platform_has_fast_fp16 = True
                self.platform_has_fast_int8 = True

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            names = [f.name for f in NetworkDefinitionCreationFlag if flags & (1 << int(f))]
            log.append(("Builder.create_network", tuple(names)))
            return INetworkDefinition(flags)

        def create_builder_config(self) -> Any:
            log.append(("Builder.create_builder_config",))
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            log.append(("Builder.create_optimization_profile",))
            return IOptimizationProfile()

        if major < 10:
            def build_engine(self, network: Any, config: Any) -> Any:  # deprecated in 8.x, removed in 10
                raise AssertionError("edgebind must use build_serialized_network, not the deprecated build_engine")

        def build_serialized_network(self, network: INetworkDefinition, config: Any) -> HostMemory | None:
            log.append(("Builder.build_serialized_network",))
            return _build(self.logger, network, config)

    def _build(logger: Any, net: INetworkDefinition, cfg: Any) -> HostMemory | None:
        def fail(text: str) -> None:
            emit(logger, Severity.ERROR, text)
            return None

        if net.onnx is None:
            return fail("Network has no inputs (nothing was parsed)")
        strong = net.strongly_typed
        flags = set(cfg._flags)
        if strong and flags & {"FP16", "INT8"}:
            return fail(f"BuilderFlag {sorted(flags & {'FP16', 'INT8'})} is not allowed with a strongly typed network")
        if net.has_qdq and not strong and "INT8" not in flags:
            return fail("Network contains Q/DQ layers but BuilderFlag::kINT8 is not set")
        profile = cfg._profiles[0] if cfg._profiles else None
        for t in net.inputs:
            if -1 in t.shape and (profile is None or t.name not in profile.shapes):
                return fail("Network has dynamic or shape inputs, but no optimization profile has been defined.")
            if profile is not None and t.name in profile.shapes:
                lo, _, hi = profile.shapes[t.name]
                if len(lo) != len(t.shape) or any(d != -1 and not (a == d == b) for d, a, b in zip(t.shape, lo, hi)):
                    return fail(f"profile for {t.name} {lo}..{hi} does not match the input dims {t.shape}")
        calibration = None
        if "INT8" in flags and not net.has_qdq:
            calibrator = getattr(cfg, "_calibrator", None)
            if calibrator is None:
                emit(logger, Severity.WARNING, "Calibrator is not being used. Users must provide dynamic range for all "
                     "tensors that are not Int8 or bool.")
            else:
                calibration = _calibrate(logger, net, cfg, calibrator)
                if calibration is None:
                    return None
        if (cfg._pools.get("WORKSPACE") or gpu.total) < (1 << 20):
            emit(logger, Severity.WARNING, "Some tactics do not have sufficient workspace memory to run.")
        hits = 0
        if cfg._timing is not None:
            for node in net.nodes:
                sig = f"{node}|{sorted(flags)}|{strong}"
                if sig in cfg._timing.entries:
                    hits += 1
                else:
                    cfg._timing.entries[sig] = 0.01
        log.append(("build", {"flags": sorted(flags), "strongly_typed": strong, "timing_hits": hits,
                              "nodes": len(net.nodes), "calibration": calibration}))
        emulate = "fp16" if not strong and "FP16" in flags and not net.has_qdq else "none"
        header = {"trt": version, "cc": list(gpu.cc), "gpu": gpu.name, "emulate": emulate,
                  "inputs": [[t.name, list(t.shape), DataType(t.dtype).name, net.onnx_input_dtypes[t.name]] for t in net.inputs],
                  "outputs": [[t.name, list(t.shape)] for t in net.outputs],
                  "profile": {k: [list(s) for s in v] for k, v in (profile.shapes.items() if profile else [])}}
        return HostMemory(PLAN_MAGIC + json.dumps(header).encode() + b"\n" + net.onnx)

    def _calibrate(logger: Any, net: INetworkDefinition, cfg: Any, calibrator: Any) -> dict[str, Any] | None:
        cached = calibrator.read_calibration_cache()
        log.append(("calibrator.read_calibration_cache", cached is not None))
        if cached:
            return {"from_cache": True, "batches": 0}
        if any(-1 in t.shape for t in net.inputs) and cfg._calib_profile is None:
            emit(logger, Severity.ERROR, "Calibration profile must be set for networks with dynamic shapes")
            return None
        batch = calibrator.get_batch_size()
        names = [t.name for t in net.inputs]
        count, peak = 0, 0.0
        while True:
            ptrs = calibrator.get_batch(names)
            log.append(("calibrator.get_batch", ptrs is not None))
            if not ptrs:
                break
            t = net.inputs[0]
            shape = cfg._calib_profile.shapes[t.name][1] if cfg._calib_profile else (batch, *t.shape[1:])
            if shape[0] != batch:
                emit(logger, Severity.ERROR, f"calibration batch size {batch} != calibration profile {shape}")
                return None
            dtype = np.dtype(nptype(t.dtype))
            data = np.frombuffer(gpu.read_device(int(ptrs[0]), int(np.prod(shape)) * dtype.itemsize), dtype=dtype)
            peak = max(peak, float(np.abs(data.astype(np.float64)).max()))
            count += 1
        if count == 0:
            emit(logger, Severity.ERROR, "Calibration failure: no calibration batches")
            return None
        table = f"TRT-{major}{minor}0{version.split('.')[2]}-EntropyCalibration2\n{net.inputs[0].name}: {peak:.6e}\n"
        calibrator.write_calibration_cache(HostMemory(table.encode()))
        return {"from_cache": False, "batches": count}

    class ICudaEngine:
        def __init__(self, header: dict[str, Any], onnx_bytes: bytes):
            self.header, self.onnx = header, onnx_bytes
            self.io = [(n, TensorIOMode.INPUT, DataType[d], tuple(s), od) for n, s, d, od in header["inputs"]]
            self.io += [(n, TensorIOMode.OUTPUT, DataType.FLOAT, tuple(s), "float32") for n, s in header["outputs"]]
            self._session = None
            if major < 10:
                self.num_bindings = len(self.io)  # legacy binding API of 8.x (unused by edgebind)

        @property
        def num_io_tensors(self) -> int:
            return len(self.io)

        def _find(self, name: str) -> tuple:
            for entry in self.io:
                if entry[0] == name:
                    return entry
            raise KeyError(name)

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return self._find(name)[1]

        def get_tensor_dtype(self, name: str) -> Any:
            return self._find(name)[2]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self._find(name)[3]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.header["profile"][name]]

        def create_execution_context(self) -> "IExecutionContext":
            log.append(("ICudaEngine.create_execution_context",))
            return IExecutionContext(self)

        def session(self) -> Any:
            if self._session is None:
                import onnxruntime as ort

                self._session = ort.InferenceSession(self.onnx, providers=["CPUExecutionProvider"])
            return self._session

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine):
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(int(d) for d in shape)
            log.append(("IExecutionContext.set_input_shape", name, shape))
            lo, _, hi = self.engine.header["profile"][name]
            if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            entry = self.engine._find(name)
            if entry[1] == TensorIOMode.INPUT:
                return self.shapes.get(name, entry[3])
            batch = next(iter(self.shapes.values()), (-1,))[0]
            return (batch, *entry[3][1:])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            log.append(("IExecutionContext.set_tensor_address", name))
            try:
                self.engine._find(name)
            except KeyError:
                return False
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            log.append(("IExecutionContext.execute_async_v3", int(stream_handle)))
            names = [e[0] for e in self.engine.io]
            if set(self.addresses) != set(names) or not self.shapes or int(stream_handle) not in gpu.streams:
                return False
            gpu.enqueue(int(stream_handle), self._run)
            return True

        def _run(self) -> None:
            feeds, engine = {}, self.engine
            for name, mode, dt, _, onnx_dtype in engine.io:
                if mode != TensorIOMode.INPUT:
                    continue
                dtype = np.dtype(nptype(dt))
                shape = self.shapes[name]
                raw = gpu.read_device(self.addresses[name], int(np.prod(shape)) * dtype.itemsize)
                x = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(onnx_dtype)
                if engine.header["emulate"] == "fp16" and x.dtype == np.float32:
                    x = x.astype(np.float16).astype(np.float32)
                feeds[name] = x
            outs = engine.session().run(None, feeds)
            for (name, mode, *_), y in zip([e for e in engine.io if e[1] == TensorIOMode.OUTPUT], outs):
                y = np.ascontiguousarray(y, dtype=np.float32)
                if engine.header["emulate"] == "fp16":
                    y = y.astype(np.float16).astype(np.float32)
                gpu.write_device(self.addresses[name], y.tobytes())

    class Runtime:
        def __init__(self, logger: Any):
            self.logger = logger

        def deserialize_cuda_engine(self, data: Any) -> ICudaEngine | None:
            data = bytes(data)
            log.append(("Runtime.deserialize_cuda_engine", len(data)))
            if not data.startswith(PLAN_MAGIC) or b"\n" not in data:
                emit(self.logger, Severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: "
                     "Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
                return None
            head, _, onnx_bytes = data[len(PLAN_MAGIC):].partition(b"\n")
            try:
                header = json.loads(head)
            except ValueError:
                emit(self.logger, Severity.ERROR, "Serialization: corrupt engine header")
                return None
            if header["trt"] != version:
                emit(self.logger, Severity.ERROR, "Serialization (Serialization assertion stdVersionRead == "
                     f"kSERIALIZATION_VERSION failed.Version tag does not match. Note: Current Version: {version}, "
                     f"Serialized Engine Version: {header['trt']})")
                return None
            if tuple(header["cc"]) != gpu.cc:
                emit(self.logger, Severity.ERROR, "The engine plan file is generated on an incompatible device, "
                     f"expecting compute {header['cc'][0]}.{header['cc'][1]} got compute {gpu.cc[0]}.{gpu.cc[1]}")
                return None
            try:
                import onnx

                onnx.load_from_string(onnx_bytes)
            except Exception:  # noqa: BLE001 - any damage to the payload is a corrupt plan
                emit(self.logger, Severity.ERROR, "Serialization: engine payload is corrupt")
                return None
            return ICudaEngine(header, onnx_bytes)

    names = dict(
        Logger=Logger, ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime,
        IBuilderConfig=IBuilderConfig, IOptimizationProfile=IOptimizationProfile, ITimingCache=ITimingCache,
        INetworkDefinition=INetworkDefinition, ICudaEngine=ICudaEngine, IExecutionContext=IExecutionContext,
        BuilderFlag=BuilderFlag, NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, DataType=DataType,
        TensorIOMode=TensorIOMode, MemoryPoolType=MemoryPoolType, nptype=nptype,
    )
    if major < 11:
        class IInt8Calibrator:
            def __init__(self) -> None:
                pass

        class IInt8EntropyCalibrator2(IInt8Calibrator):
            pass

        names.update(IInt8Calibrator=IInt8Calibrator, IInt8EntropyCalibrator2=IInt8EntropyCalibrator2)
    for k, v in names.items():
        setattr(trt, k, v)
    return trt
