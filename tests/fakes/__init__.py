"""Fakes of GPU-only libraries (TensorRT, cuda-python, pycuda) for unit tests on machines without a GPU.

``install(monkeypatch, "10.3.0.30", cuda="cuda-python")`` puts a fake ``tensorrt`` and the chosen
fake CUDA binding into ``sys.modules`` (and hides the others: a ``None`` entry makes imports fail
like a missing package), restored when the test ends. See ``fake_tensorrt`` and ``fake_cuda`` for
which real API each fake method mirrors and how TensorRT 8.5 / 10.x / 11.x differ.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any

from .fake_cuda import FakeGpu, cuda_python_modules, pycuda_modules
from .fake_tensorrt import VERSIONS, make_tensorrt

__all__ = ["FakeGpu", "FakeStack", "VERSIONS", "install", "hide", "make_tensorrt"]

_CUDA_NAMES = ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart")
_PYCUDA_NAMES = ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx", "pycuda.autoinit")


@dataclasses.dataclass
class FakeStack:
    trt: types.ModuleType | None
    gpu: FakeGpu
    cuda: str | None

    @property
    def calls(self) -> list[tuple[Any, ...]]:
        return self.gpu.calls

    def named(self, *prefixes: str) -> list[tuple[Any, ...]]:
        """The calls whose name starts with one of ``prefixes``, in order."""
        return [c for c in self.gpu.calls if str(c[0]).startswith(prefixes)]

    def build_record(self) -> dict[str, Any]:
        """What the fake builder saw in the last build (flags, strong typing, timing-cache hits, calibration)."""
        records = [c[1] for c in self.gpu.calls if c[0] == "build"]
        assert records, "no engine was built"
        return records[-1]


def hide(monkeypatch: Any, *names: str) -> None:
    """Make ``import name`` fail as if the package were not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def install(monkeypatch: Any, trt_version: str | None = "10", *, cuda: str | None = "cuda-python",
            gpu: FakeGpu | None = None) -> FakeStack:
    """Install fakes: TensorRT ``trt_version`` (None hides TensorRT) and ``cuda`` in
    {"cuda-python", "cuda-python-legacy", "pycuda", "both", None}."""
    gpu = gpu or FakeGpu()
    hide(monkeypatch, "tensorrt", *_CUDA_NAMES, *_PYCUDA_NAMES)
    trt = None
    if trt_version is not None:
        trt = make_tensorrt(trt_version, gpu)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
    modules: dict[str, types.ModuleType] = {}
    if cuda in ("cuda-python", "both"):
        modules.update(cuda_python_modules(gpu))
    if cuda == "cuda-python-legacy":
        modules.update(cuda_python_modules(gpu, legacy=True))
    if cuda in ("pycuda", "both"):
        modules.update(pycuda_modules(gpu))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return FakeStack(trt, gpu, cuda)
