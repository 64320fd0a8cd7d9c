"""A fake GPU and fake CUDA bindings (cuda-python runtime module, pycuda driver) for tests without a GPU.

``FakeGpu`` holds "device" allocations (ctypes buffers, so addresses are real but registered as
device memory), pinned host allocations, streams with queued work, and one shared ``calls`` log
that the fake TensorRT writes to as well, so tests can check the interleaving of CUDA and TensorRT
calls. Asynchronous semantics are kept: ``cudaMemcpyAsync`` and ``execute_async_v3`` only queue
work on the stream; it runs at ``cudaStreamSynchronize`` / ``Stream.synchronize()``. A runner that
reads its output before synchronising therefore reads stale data, as it would on a real GPU.

Mirrored APIs (with where they differ between library versions):

cuda-python runtime (``cuda.bindings.runtime`` in cuda-python >= 12.6; ``cuda.cudart`` before, the
same functions; 13.x removed ``cuda.cudart``). Every function returns a tuple whose first item is a
``cudaError_t``:
    cudaSetDevice(int) -> (err,); cudaGetDeviceCount() -> (err, count)
    cudaGetDeviceProperties(int) -> (err, cudaDeviceProp)  # .name bytes (NUL padded), .major, .minor, .totalGlobalMem
    cudaMemGetInfo() -> (err, free, total)
    cudaStreamCreate() -> (err, cudaStream_t)               # int(stream) is the handle
    cudaStreamDestroy(stream) / cudaStreamSynchronize(stream) -> (err,)
    cudaMalloc(size) -> (err, ptr); cudaFree(ptr) -> (err,)
    cudaMallocHost(size) -> (err, ptr); cudaFreeHost(ptr) -> (err,)
    cudaMemcpyAsync(dst, src, count, cudaMemcpyKind, stream) -> (err,)
    cudaGetErrorString(err) -> (err, bytes)

pycuda (``pycuda.driver``; ``pycuda.autoprimaryctx`` since 2021.1, ``pycuda.autoinit`` before):
    Device(i).name() / .compute_capability() / .total_memory(); mem_get_info() -> (free, total)
    mem_alloc(n) -> DeviceAllocation (int(), .free()); pagelocked_empty(shape, dtype) -> ndarray whose
    .base is a HostAllocation with .free(); Stream() (.handle, .synchronize());
    memcpy_htod_async(dest, src_array, stream); memcpy_dtoh_async(dest_array, src, stream)
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import types
from typing import Any, Callable

import numpy as np

GIB = 1 << 30


class FakeGpu:
    """The simulated device shared by the fake CUDA bindings and the fake TensorRT."""

    def __init__(self, name: str = "Orin", cc: tuple[int, int] = (8, 7), total: int = 8 * GIB, free: int = 6 * GIB,
                 present: bool = True):
        self.name, self.cc, self.total, self.free, self.present = name, cc, total, free, present
        self.calls: list[tuple[Any, ...]] = []
        self.device: dict[int, Any] = {}   # address -> ctypes buffer
        self.host: dict[int, Any] = {}     # pinned address -> ctypes buffer
        self.streams: dict[int, list[Callable[[], None]]] = {}
        self._next_stream = 0x5000
        self.fail: set[str] = set()        # names of calls that should fail once

    # memory
    def malloc(self, n: int, *, pinned: bool = False) -> int:
        buf = (ctypes.c_char * max(int(n), 1))()
        addr = ctypes.addressof(buf)
        (self.host if pinned else self.device)[addr] = buf
        return addr

    def free_ptr(self, ptr: int, *, pinned: bool = False) -> bool:
        return (self.host if pinned else self.device).pop(int(ptr), None) is not None

    def _device_range(self, ptr: int, n: int) -> None:
        for base, buf in self.device.items():
            if base <= ptr and ptr + n <= base + ctypes.sizeof(buf):
                return
        raise ValueError(f"{hex(ptr)}+{n} is not inside a device allocation")

    def is_device(self, ptr: int) -> bool:
        return any(base <= ptr < base + ctypes.sizeof(buf) for base, buf in self.device.items())

    def read_device(self, ptr: int, n: int) -> bytes:
        self._device_range(ptr, n)
        return ctypes.string_at(ptr, n)

    def write_device(self, ptr: int, data: bytes) -> None:
        self._device_range(ptr, len(data))
        ctypes.memmove(ptr, data, len(data))

    # streams
    def new_stream(self) -> int:
        self._next_stream += 0x10
        self.streams[self._next_stream] = []
        return self._next_stream

    def enqueue(self, handle: int, op: Callable[[], None]) -> None:
        if int(handle) not in self.streams:
            raise ValueError(f"unknown stream {hex(int(handle))}")
        self.streams[int(handle)].append(op)

    def synchronize(self, handle: int) -> None:
        queue = self.streams[int(handle)]
        while queue:
            queue.pop(0)()

    def copy(self, kind: str, dst: int, src: int, n: int) -> Callable[[], None]:
        """The queued operation of an async copy; validates the direction now, like CUDA does at enqueue."""
        if kind == "H2D":
            self._device_range(dst, n)
            if self.is_device(src):
                raise ValueError("H2D source is device memory")
            return lambda: ctypes.memmove(dst, src, n)
        self._device_range(src, n)
        if self.is_device(dst):
            raise ValueError("D2H destination is device memory")
        return lambda: ctypes.memmove(dst, src, n)


def _module(name: str, package: bool = False) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=package)
    if package:
        mod.__path__ = []  # type: ignore[attr-defined]
    return mod


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:
    def __init__(self, handle: int):
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


class cudaDeviceProp:
    def __init__(self, name: str, cc: tuple[int, int], total: int):
        self.name = name.encode().ljust(256, b"\0")
        self.major, self.minor = cc
        self.totalGlobalMem = total


def make_cuda_runtime(gpu: FakeGpu, module_name: str = "cuda.bindings.runtime") -> types.ModuleType:
    """The cuda-python runtime module over ``gpu``."""
    rt = _module(module_name)
    ok = cudaError_t.cudaSuccess

    def call(name: str, *args: Any) -> cudaError_t | None:
        gpu.calls.append((name, *args))
        if not gpu.present:
            return cudaError_t.cudaErrorNoDevice
        if name in gpu.fail:
            gpu.fail.discard(name)
            return cudaError_t.cudaErrorMemoryAllocation
        return None

    def cudaSetDevice(device: int):
        return (call("cudaSetDevice", device) or ok,)

    def cudaGetDeviceCount():
        err = call("cudaGetDeviceCount")
        return (err, 0) if err else (ok, 1)

    def cudaGetDeviceProperties(device: int):
        err = call("cudaGetDeviceProperties", device)
        return (err, None) if err else (ok, cudaDeviceProp(gpu.name, gpu.cc, gpu.total))

    def cudaMemGetInfo():
        err = call("cudaMemGetInfo")
        return (err, None, None) if err else (ok, gpu.free, gpu.total)

    def cudaStreamCreate():
        err = call("cudaStreamCreate")
        return (err, None) if err else (ok, cudaStream_t(gpu.new_stream()))

    def cudaStreamDestroy(stream):
        err = call("cudaStreamDestroy", int(stream))
        if err:
            return (err,)
        return (ok,) if gpu.streams.pop(int(stream), None) is not None else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaStreamSynchronize(stream):
        err = call("cudaStreamSynchronize", int(stream))
        if err:
            return (err,)
        if int(stream) not in gpu.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        gpu.synchronize(int(stream))
        return (ok,)

    def cudaMalloc(size: int):
        err = call("cudaMalloc", size)
        return (err, None) if err else (ok, gpu.malloc(size))

    def cudaFree(ptr: int):
        err = call("cudaFree", ptr)
        return (err or (ok if gpu.free_ptr(ptr) else cudaError_t.cudaErrorInvalidValue),)

    def cudaMallocHost(size: int):
        err = call("cudaMallocHost", size)
        return (err, None) if err else (ok, gpu.malloc(size, pinned=True))

    def cudaFreeHost(ptr: int):
        err = call("cudaFreeHost", ptr)
        return (err or (ok if gpu.free_ptr(ptr, pinned=True) else cudaError_t.cudaErrorInvalidValue),)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        label = {cudaMemcpyKind.cudaMemcpyHostToDevice: "H2D", cudaMemcpyKind.cudaMemcpyDeviceToHost: "D2H"}.get(kind)
        err = call("cudaMemcpyAsync", label, int(count), int(stream))
        if err:
            return (err,)
        if label is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        try:
            gpu.enqueue(int(stream), gpu.copy(label, int(dst), int(src), int(count)))
        except ValueError:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (ok,)

    def cudaGetErrorString(err):
        return (ok, f"fake CUDA error {cudaError_t(err).name}".encode())

    for fn in (cudaSetDevice, cudaGetDeviceCount, cudaGetDeviceProperties, cudaMemGetInfo, cudaStreamCreate, cudaStreamDestroy,
               cudaStreamSynchronize, cudaMalloc, cudaFree, cudaMallocHost, cudaFreeHost, cudaMemcpyAsync,
               cudaGetErrorString):
        setattr(rt, fn.__name__, fn)
    rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStream_t, rt.cudaDeviceProp = (
        cudaError_t, cudaMemcpyKind, cudaStream_t, cudaDeviceProp)
    return rt


def cuda_python_modules(gpu: FakeGpu, *, legacy: bool = False) -> dict[str, types.ModuleType]:
    """sys.modules entries for cuda-python: the new ``cuda.bindings.runtime`` or the legacy ``cuda.cudart``."""
    cuda = _module("cuda", package=True)
    if legacy:
        rt = make_cuda_runtime(gpu, "cuda.cudart")
        cuda.cudart = rt  # type: ignore[attr-defined]
        return {"cuda": cuda, "cuda.cudart": rt}
    bindings = _module("cuda.bindings", package=True)
    rt = make_cuda_runtime(gpu)
    bindings.runtime = rt  # type: ignore[attr-defined]
    cuda.bindings = bindings  # type: ignore[attr-defined]
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}


def pycuda_modules(gpu: FakeGpu) -> dict[str, types.ModuleType]:
    """sys.modules entries for pycuda: ``pycuda``, ``pycuda.driver``, ``pycuda.autoprimaryctx``."""
    pkg = _module("pycuda", package=True)
    drv = _module("pycuda.driver")
    ctx = _module("pycuda.autoprimaryctx")

    class Device:
        def __init__(self, ordinal: int):
            if not gpu.present:
                raise RuntimeError("cuInit failed: no CUDA-capable device is detected")
            self.ordinal = ordinal

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple[int, int]:
            return gpu.cc

        def total_memory(self) -> int:
            return gpu.total

    class DeviceAllocation:
        def __init__(self, n: int):
            self.ptr = gpu.malloc(n)

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            gpu.calls.append(("DeviceAllocation.free", self.ptr))
            gpu.free_ptr(self.ptr)

    class Stream:
        def __init__(self) -> None:
            self.handle = gpu.new_stream()
            gpu.calls.append(("Stream",))

        def synchronize(self) -> None:
            gpu.calls.append(("Stream.synchronize", self.handle))
            gpu.synchronize(self.handle)

    def mem_alloc(n: int) -> DeviceAllocation:
        gpu.calls.append(("mem_alloc", n))
        return DeviceAllocation(n)

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = max(count * dtype.itemsize, 1)

        class HostAllocation(ctypes.c_char * nbytes):  # type: ignore[misc, valid-type]
            def free(self) -> None:
                gpu.calls.append(("HostAllocation.free", ctypes.addressof(self)))
                gpu.free_ptr(ctypes.addressof(self), pinned=True)

        host = HostAllocation()
        gpu.host[ctypes.addressof(host)] = host
        gpu.calls.append(("pagelocked_empty", tuple(shape), dtype.name))
        return np.ndarray(tuple(shape), dtype=dtype, buffer=host)  # .base is the HostAllocation, as in pycuda

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Stream) -> None:
        gpu.calls.append(("memcpy_htod_async", src.nbytes, stream.handle))
        gpu.enqueue(stream.handle, gpu.copy("H2D", int(dest), src.ctypes.data, src.nbytes))

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Stream) -> None:
        gpu.calls.append(("memcpy_dtoh_async", dest.nbytes, stream.handle))
        gpu.enqueue(stream.handle, gpu.copy("D2H", dest.ctypes.data, int(src), dest.nbytes))

    def mem_get_info() -> tuple[int, int]:
        return gpu.free, gpu.total

    for obj in (Device, DeviceAllocation, Stream, mem_alloc, pagelocked_empty, memcpy_htod_async, memcpy_dtoh_async,
                mem_get_info):
        setattr(drv, obj.__name__, obj)
    pkg.driver = drv  # type: ignore[attr-defined]
    return {"pycuda": pkg, "pycuda.driver": drv, "pycuda.autoprimaryctx": ctx}
