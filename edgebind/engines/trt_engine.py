"""TensorRT runner: one cached plan, run through the named-tensor API with reusable CUDA buffers.

Per ``run``: the batch is split into chunks of at most the profile's max batch; for each chunk,
pinned host + device buffers for that batch size are taken from a ``BufferPool`` (allocated once,
reused), the input is written into pinned memory (cast to the engine's tensor dtype: TensorRT 8.x
turns the text tower's int64 token ids into an INT32 input), then::

    context.set_input_shape(input, (B, ...))
    context.set_tensor_address(name, device_ptr)     # every I/O tensor
    cudaMemcpyAsync H2D  ->  context.execute_async_v3(stream)  ->  cudaMemcpyAsync D2H
    cudaStreamSynchronize(stream)

``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` exist from TensorRT 8.5 on, so
this one path serves JetPack 5.1 through TensorRT 11. One engine is one execution context and one
stream: not thread-safe (use one engine per thread).

``open_trt_engine`` is what ``edgebind.engines.select.open_engine`` calls for ``backend="tensorrt"``:
it ensures the plan (reuse, build, or report), deserialises it and, when a plan that looked valid
cannot be deserialised (corrupt file), discards and rebuilds it once if building is allowed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import ConfigError, EngineError, MissingDependencyError
from ..modality import Modality
from . import cache as C
from .base import Engine
from .cuda_buffers import BufferPool, CudaRuntime, cuda_library_available, open_cuda
from .trt_build import TrtBuildConfig, ensure_engine_status, make_logger

logger = logging.getLogger(__name__)


class TensorRTEngine(Engine):
    """A deserialised TensorRT plan for one tower (see the module docstring for the call sequence)."""

    def __init__(self, plan_path: str | os.PathLike[str], key: C.EngineCacheKey, *, input_spec: Any, output_spec: Any,
                 reason: str = "", cuda: CudaRuntime | None = None, cuda_library: str = "auto", device: int = 0):
        super().__init__(modality=key.modality, backend="tensorrt", precision=key.precision, form=key.form,
                         input_spec=input_spec, output_spec=output_spec, reason=reason)
        trt = require("tensorrt", extra="tensorrt", purpose="TensorRT engines")
        self.plan_path = Path(plan_path)
        self.key = key
        self.cache: dict[str, Any] = {"status": "hit", "folder": os.fspath(self.plan_path.parent), "plan": self.plan_path.name}
        self._trt = trt
        self._cuda = cuda or open_cuda(cuda_library, device)
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        data = self.plan_path.read_bytes()
        engine = self._runtime.deserialize_cuda_engine(data)
        del data
        if engine is None:
            detail = "; ".join(self._logger.errors()[-3:]) or "no message"
            raise EngineError(f"{self.plan_path}: TensorRT {trt.__version__} cannot deserialise this plan ({detail}); "
                              "it is corrupt or was built elsewhere: delete it or run `edgebind build`")
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"{self.plan_path}: TensorRT could not create an execution context (out of device memory?)")
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self._dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            (self._inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self._outputs).append(name)
        if self._inputs != [input_spec.name] or not self._outputs:
            raise EngineError(f"{self.plan_path}: engine I/O inputs {self._inputs} outputs {self._outputs} do not match "
                              f"the manifest's input {input_spec.name!r}")
        self._output = output_spec.name if output_spec.name in self._outputs else self._outputs[0]
        self.max_batch = key.profile_max[0]
        self.min_batch = key.profile_min[0]
        self._stream = self._cuda.create_stream()
        self._pool = BufferPool(self._cuda)

    @property
    def input_dtype(self) -> np.dtype:
        """The engine's input tensor dtype (int32 where TensorRT narrowed int64 token ids)."""
        return self._dtypes[self._inputs[0]]

    @property
    def buffer_pool(self) -> BufferPool:
        return self._pool

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] < self.min_batch:
            raise EngineError(f"{self.plan_path.name}: batch {batch.shape[0]} is below the profile's minimum {self.min_batch}")
        outs = [self._run_chunk(batch[i : i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        name, ctx, cuda = self._inputs[0], self._context, self._cuda
        dtype = self._dtypes[name]
        host_in = _to_engine_dtype(chunk, dtype, name)
        if not ctx.set_input_shape(name, tuple(int(d) for d in chunk.shape)):
            raise EngineError(f"{self.plan_path.name}: TensorRT rejected input shape {chunk.shape} for {name!r} "
                              f"(profile {list(self.key.profile_min)}..{list(self.key.profile_max)})")
        buf_in = self._pool.get(name, chunk.shape, dtype)
        buf_in.host[...] = host_in
        outs = {}
        for out in self._outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(out))
            if any(d < 0 for d in shape):
                raise EngineError(f"{self.plan_path.name}: output {out!r} shape {shape} unresolved after set_input_shape")
            outs[out] = self._pool.get(out, shape, self._dtypes[out])
        for tensor, buf in ((name, buf_in), *outs.items()):
            if not ctx.set_tensor_address(tensor, buf.device):
                raise EngineError(f"{self.plan_path.name}: set_tensor_address({tensor!r}) failed")
        cuda.memcpy_htod_async(buf_in.device, buf_in.host, self._stream)
        if not ctx.execute_async_v3(self._stream.handle):
            detail = "; ".join(self._logger.errors()[-3:]) or "no message"
            raise EngineError(f"{self.plan_path.name}: execute_async_v3 failed ({detail})")
        for buf in outs.values():
            cuda.memcpy_dtoh_async(buf.host, buf.device, self._stream)
        cuda.synchronize(self._stream)
        return np.array(outs[self._output].host, dtype=np.float32, copy=True)

    def _release(self) -> None:
        pool, stream = getattr(self, "_pool", None), getattr(self, "_stream", None)
        self._context = self._engine = self._runtime = None
        if pool is not None:
            pool.close()
        if stream is not None:
            self._cuda.destroy_stream(stream)
            self._stream = None


def _to_engine_dtype(chunk: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    if chunk.dtype == dtype:
        return chunk
    if np.issubdtype(dtype, np.integer) and np.issubdtype(chunk.dtype, np.integer):
        info = np.iinfo(dtype)
        if chunk.size and (chunk.min() < info.min or chunk.max() > info.max):
            raise EngineError(f"input {name!r}: values outside {dtype} (the engine narrowed this input to {dtype})")
    return chunk.astype(dtype)


_BUILD_KEYS = {f for f in TrtBuildConfig.__dataclass_fields__}


def open_trt_engine(bundle_dir: str | os.PathLike[str], manifest: Any, modality: str | Modality, precision: str, *,
                    engines_root: str | os.PathLike[str] | None = "engines", build: bool = True,
                    batch_profile: tuple[int, int, int] = (1, 1, 8), workspace_mb: int | None = None,
                    builder_optimization_level: int | None = None, reason: str | None = None, **kw: Any) -> TensorRTEngine:
    """Open (building or reusing the cached plan as needed) a TensorRT engine for one tower.

    Extra keywords are ``TrtBuildConfig`` fields (``fp16_mode``, ``int8_mode``, ``calibration``,
    ``cuda``, ``timing_cache``, ...). MissingDependencyError (extra "tensorrt") when tensorrt or a
    CUDA binding is absent; EngineError when the plan cannot be had (``build=False``) or run.
    """
    require("tensorrt", extra="tensorrt", purpose="TensorRT engines")
    if cuda_library_available() is None:
        raise MissingDependencyError("cuda-python", "tensorrt", "TensorRT device buffers (or install pycuda)")
    unknown = sorted(set(kw) - _BUILD_KEYS)
    if unknown:
        raise ConfigError(f"open_trt_engine: unknown option(s) {unknown}; known: {sorted(_BUILD_KEYS)}")
    config = TrtBuildConfig(batch_profile=tuple(batch_profile), workspace_mb=workspace_mb,  # type: ignore[arg-type]
                            builder_optimization_level=builder_optimization_level, **kw)
    if manifest is None:
        from ..bundle.manifest import load_manifest

        manifest = load_manifest(bundle_dir)
    tower = manifest.tower(modality)
    if engines_root is None:  # "no caches": build into a temporary folder, deleted once the plan is loaded
        if not build:
            raise EngineError("engines_root=None (no engine cache) needs build=True: there is no cached plan to reuse")
        with tempfile.TemporaryDirectory(prefix="edgebind-trt-") as tmp:
            return open_trt_engine(bundle_dir, manifest, modality, precision, engines_root=tmp, build=True,
                                   batch_profile=batch_profile, workspace_mb=workspace_mb,
                                   builder_optimization_level=builder_optimization_level, reason=reason, **kw)
    plan, key, stale = ensure_engine_status(bundle_dir, manifest, modality, precision, engines_root=engines_root,
                                            build=build, config=config)
    for attempt in (1, 2):
        built = stale is not None
        why = reason or (f"tensorrt {key.tensorrt} on {key.gpu_name} (sm {key.compute_capability}): {key.form} engine "
                         f"{plan.name} ({'built now' if built else 'from cache'})")
        try:
            engine = TensorRTEngine(plan, key, input_spec=tower.input, output_spec=tower.output, reason=why,
                                    cuda_library=config.cuda, device=config.device)
        except EngineError as exc:
            if attempt == 2 or built or not build or "cannot deserialise" not in str(exc):
                raise
            C.invalidate_plan(plan, str(exc))
            plan, key, stale = ensure_engine_status(bundle_dir, manifest, modality, precision, engines_root=engines_root,
                                                    build=True, config=config)
            stale = (f"corrupt plan: {exc}",)
            continue
        status = "hit" if stale is None else ("created" if stale[0].startswith("no plan at") else "rebuilt: " + "; ".join(stale))
        engine.cache = {"status": status, "folder": os.fspath(plan.parent), "plan": plan.name}
        return engine
    raise AssertionError("unreachable")  # pragma: no cover
