"""CUDA streams and buffers for the TensorRT runner: one small interface, two implementations.

TensorRT's Python API takes raw device addresses (``set_tensor_address``) and a stream handle
(``execute_async_v3``); it does not allocate I/O memory itself. This module provides exactly that
surface, from whichever CUDA binding the device has:

* ``cuda-python`` (NVIDIA's bindings; what TensorRT 10.x samples use): the runtime API module is
  ``cuda.bindings.runtime`` from cuda-python 12.6 on, ``cuda.cudart`` before (13.x dropped the old
  name). Every call returns a tuple whose first item is a ``cudaError_t``.
* ``pycuda`` (what TensorRT 8.x samples and many JetPack 5 setups use): ``pycuda.driver`` with the
  primary context retained by ``pycuda.autoprimaryctx`` (``pycuda.autoinit`` on old releases), so it
  shares the context TensorRT's runtime uses.

``open_cuda("auto")`` picks cuda-python when importable, else pycuda; ``"cuda-python"`` or
``"pycuda"`` forces one. Neither installed -> ``MissingDependencyError`` naming the ``tensorrt``
extra. ``BufferPool`` keeps one pinned host + device buffer pair per (tensor, shape) (the shape
differs only by batch size), allocated on first use and reused, all freed by ``close()``. ``default_workspace_bytes`` and ``meminfo`` size the TensorRT build
from the device's and the host's memory.

Device path: numpy and ctypes only.
"""

from __future__ import annotations

import abc
import ctypes
import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import is_available
from ..errors import ConfigError, EngineError, MissingDependencyError

logger = logging.getLogger(__name__)

CUDA_LIBRARIES = ("auto", "cuda-python", "pycuda")
_CUDA_PYTHON_MODULES = ("cuda.bindings.runtime", "cuda.cudart")  # new layout first, pre-12.6 name second


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The GPU the engines are built for and run on."""

    name: str
    compute_capability: tuple[int, int]
    total_bytes: int
    free_bytes: int

    @property
    def cc(self) -> str:
        """Compute capability as ``"8.7"``."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


class CudaStream:
    """A CUDA stream; ``handle`` is the integer TensorRT's ``execute_async_v3`` takes."""

    def __init__(self, native: Any, handle: int):
        self.native = native
        self.handle = int(handle)


class CudaRuntime(abc.ABC):
    """The few CUDA calls the TensorRT backend needs (allocation, async copies, streams)."""

    library: str

    @abc.abstractmethod
    def device_info(self) -> DeviceInfo: ...

    @abc.abstractmethod
    def create_stream(self) -> CudaStream: ...

    @abc.abstractmethod
    def destroy_stream(self, stream: CudaStream) -> None: ...

    @abc.abstractmethod
    def malloc(self, nbytes: int) -> int:
        """Device memory; returns its address."""

    @abc.abstractmethod
    def free(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def malloc_host(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Pinned (page-locked) host memory viewed as a numpy array."""

    @abc.abstractmethod
    def free_host(self, array: np.ndarray) -> None: ...

    @abc.abstractmethod
    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: CudaStream) -> None: ...

    @abc.abstractmethod
    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: CudaStream) -> None: ...

    @abc.abstractmethod
    def synchronize(self, stream: CudaStream) -> None: ...


class CudaPythonRuntime(CudaRuntime):
    """cuda-python's runtime API (``cudaMalloc``, ``cudaMallocHost``, ``cudaMemcpyAsync``, ``cudaStream*``)."""

    library = "cuda-python"

    def __init__(self, rt: Any, device: int = 0):
        self._rt = rt
        self._device = device
        self._host: dict[int, int] = {}  # id(array) -> pinned address
        self._check(rt.cudaSetDevice(device), "cudaSetDevice")

    def _check(self, result: Any, call: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            name = getattr(err, "name", str(err))
            try:
                text = self._rt.cudaGetErrorString(err)[1]
                text = text.decode() if isinstance(text, bytes) else str(text)
            except Exception:  # noqa: BLE001 - the error name alone still says what failed
                text = ""
            raise EngineError(f"CUDA (cuda-python): {call} failed with {name}" + (f": {text}" if text else ""))
        return rest[0] if len(rest) == 1 else tuple(rest)

    def device_info(self) -> DeviceInfo:
        prop = self._check(self._rt.cudaGetDeviceProperties(self._device), "cudaGetDeviceProperties")
        free, total = self._check(self._rt.cudaMemGetInfo(), "cudaMemGetInfo")
        name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(name.strip(), (int(prop.major), int(prop.minor)), int(total), int(free))

    def create_stream(self) -> CudaStream:
        stream = self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        return CudaStream(stream, int(stream))

    def destroy_stream(self, stream: CudaStream) -> None:
        self._check(self._rt.cudaStreamDestroy(stream.native), "cudaStreamDestroy")

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def malloc_host(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = max(count * dtype.itemsize, 1)
        ptr = int(self._check(self._rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        raw = (ctypes.c_char * nbytes).from_address(ptr)
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        self._host[id(array)] = ptr
        return array

    def free_host(self, array: np.ndarray) -> None:
        ptr = self._host.pop(id(array), None)
        if ptr is not None:
            self._check(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: CudaStream) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream.native), "cudaMemcpyAsync H2D")

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: CudaStream) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream.native), "cudaMemcpyAsync D2H")

    def synchronize(self, stream: CudaStream) -> None:
        self._check(self._rt.cudaStreamSynchronize(stream.native), "cudaStreamSynchronize")


class PyCudaRuntime(CudaRuntime):
    """pycuda's driver API (``mem_alloc``, ``pagelocked_empty``, ``memcpy_*_async``, ``Stream``)."""

    library = "pycuda"

    def __init__(self, driver: Any, device: int = 0):
        self._drv = driver
        self._device = driver.Device(device)
        self._allocs: dict[int, Any] = {}

    def device_info(self) -> DeviceInfo:
        free, total = self._drv.mem_get_info()
        major, minor = self._device.compute_capability()
        return DeviceInfo(str(self._device.name()).strip(), (int(major), int(minor)), int(total), int(free))

    def create_stream(self) -> CudaStream:
        stream = self._drv.Stream()
        return CudaStream(stream, stream.handle)

    def destroy_stream(self, stream: CudaStream) -> None:
        stream.native = None  # pycuda destroys the stream when the object is collected

    def malloc(self, nbytes: int) -> int:
        try:
            alloc = self._drv.mem_alloc(max(int(nbytes), 1))
        except Exception as exc:  # noqa: BLE001 - pycuda raises its own MemoryError/LogicError types
            raise EngineError(f"CUDA (pycuda): mem_alloc({nbytes}) failed: {exc}") from exc
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(int(ptr), None)
        if alloc is not None:
            alloc.free()

    def malloc_host(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self._drv.pagelocked_empty(tuple(shape), np.dtype(dtype))

    def free_host(self, array: np.ndarray) -> None:
        base = getattr(array, "base", None)
        while base is not None and not hasattr(base, "free"):  # views of views: find the HostAllocation
            base = getattr(base, "base", None)
        if base is not None:
            base.free()

    def memcpy_htod_async(self, dst: int, src: np.ndarray, stream: CudaStream) -> None:
        self._drv.memcpy_htod_async(dst, src, stream.native)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: int, stream: CudaStream) -> None:
        self._drv.memcpy_dtoh_async(dst, src, stream.native)

    def synchronize(self, stream: CudaStream) -> None:
        stream.native.synchronize()


def cuda_library_available() -> str | None:
    """The CUDA binding ``open_cuda("auto")`` would use, or None; never imports it."""
    if any(is_available(m) for m in _CUDA_PYTHON_MODULES):
        return "cuda-python"
    if is_available("pycuda"):
        return "pycuda"
    return None


def _import_cuda_python() -> Any:
    for name in _CUDA_PYTHON_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError("cuda-python", "tensorrt", "TensorRT device buffers")


def _import_pycuda() -> Any:
    try:
        driver = importlib.import_module("pycuda.driver")
    except ImportError:
        raise MissingDependencyError("pycuda", "tensorrt", "TensorRT device buffers") from None
    for ctx in ("pycuda.autoprimaryctx", "pycuda.autoinit"):  # primary context first: TensorRT uses it
        try:
            importlib.import_module(ctx)
            break
        except ImportError:
            continue
    return driver


def open_cuda(library: str = "auto", device: int = 0) -> CudaRuntime:
    """A ``CudaRuntime`` on ``device`` from ``library`` ("auto": cuda-python, else pycuda)."""
    if library not in CUDA_LIBRARIES:
        raise ConfigError(f"cuda: expected one of {list(CUDA_LIBRARIES)}, got {library!r}")
    if library == "auto":
        library = cuda_library_available() or "cuda-python"
    try:
        if library == "cuda-python":
            return CudaPythonRuntime(_import_cuda_python(), device)
        return PyCudaRuntime(_import_pycuda(), device)
    except (MissingDependencyError, EngineError):
        raise
    except Exception as exc:  # noqa: BLE001 - no driver / no device surfaces as library-specific errors
        raise EngineError(f"CUDA ({library}): cannot use device {device}: {exc}") from exc


GIB = 1 << 30
SMALL_BOARD_BYTES = 8 * GIB          # Orin Nano 8 GB (reports ~7.4 GiB) and smaller
SMALL_BOARD_WORKSPACE_CAP = 1 * GIB
WORKSPACE_CAP = 4 * GIB
WORKSPACE_FRACTION = 0.5
MIN_WORKSPACE = 64 << 20


def default_workspace_bytes(free_bytes: int, total_bytes: int) -> int:
    """Half the free device memory, capped at 1 GiB on boards with <= 8 GiB (Orin Nano), 4 GiB elsewhere.

    Jetson memory is shared with the CPU, and TensorRT's default (all of it) makes 8 GB boards
    kill the build (``Tactic Device request: 4248MB Available: 2507MB``); tactics that need more
    are skipped, not failed. Never below 64 MiB.
    """
    cap = SMALL_BOARD_WORKSPACE_CAP if total_bytes <= SMALL_BOARD_BYTES else WORKSPACE_CAP
    return int(max(MIN_WORKSPACE, min(cap, free_bytes * WORKSPACE_FRACTION)))


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """``/proc/meminfo`` in bytes ({} where it does not exist)."""
    out: dict[str, int] = {}
    try:
        for line in Path(path).read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[name] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    except OSError:
        pass
    return out


@dataclasses.dataclass
class HostDeviceBuffer:
    """A pinned host array and a device allocation of the same size."""

    host: np.ndarray
    device: int

    @property
    def nbytes(self) -> int:
        return int(self.host.nbytes)


class BufferPool:
    """Pinned host + device buffers per (tensor name, shape), allocated on first use and reused.

    Shapes of one engine differ only by batch size, so this is "one pair per tensor and batch
    size". ``close()`` frees everything and is idempotent.
    """

    def __init__(self, cuda: CudaRuntime):
        self._cuda = cuda
        self._buffers: dict[tuple[str, tuple[int, ...]], HostDeviceBuffer] = {}
        self.allocations = 0  # how many pairs were ever allocated (reuse shows as a flat count)

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> HostDeviceBuffer:
        key = (name, tuple(int(d) for d in shape))
        buf = self._buffers.get(key)
        if buf is not None and buf.host.dtype == np.dtype(dtype):
            return buf
        if buf is not None:
            self._free(buf)
        host = self._cuda.malloc_host(key[1], dtype)
        try:
            device = self._cuda.malloc(host.nbytes)
        except BaseException:
            self._cuda.free_host(host)
            raise
        buf = HostDeviceBuffer(host, device)
        self._buffers[key] = buf
        self.allocations += 1
        return buf

    def batch_sizes(self, name: str) -> list[int]:
        return sorted(shape[0] for (n, shape) in self._buffers if n == name and shape)

    def _free(self, buf: HostDeviceBuffer) -> None:
        try:
            self._cuda.free(buf.device)
        finally:
            self._cuda.free_host(buf.host)

    def close(self) -> None:
        buffers, self._buffers = list(self._buffers.values()), {}
        errors = []
        for buf in buffers:
            try:
                self._free(buf)
            except EngineError as exc:
                errors.append(str(exc))
        if errors:
            logger.warning("freeing CUDA buffers: %s", "; ".join(errors))

    def __len__(self) -> int:
        return len(self._buffers)
