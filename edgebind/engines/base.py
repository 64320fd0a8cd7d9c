"""The ``Engine`` interface every inference backend implements (ONNX Runtime, TensorRT).

An engine runs one tower of an exported bundle: a batch of preprocessed inputs in, ``[B, D]``
float32 embeddings out. The base class owns what every backend shares: input validation against
the manifest's ``TensorSpec`` (with the few safe casts: float64/float16 -> the graph's float type,
int32 <-> int64 for token ids), latency bookkeeping, warm-up, idempotent ``close()`` and the
context-manager protocol. A backend implements only ``_infer`` and ``_release``.

Device path: numpy only, never torch.
"""

from __future__ import annotations

import abc
import logging
import time
from typing import Any

import numpy as np

from ..bundle.manifest import TensorSpec
from ..errors import EngineError
from ..modality import Modality

logger = logging.getLogger(__name__)

BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
"""Values of ``Engine.backend``."""

_FLOAT_DTYPES = {"float32": np.float32, "float16": np.float16}
_INT_DTYPES = {"int64": np.int64, "int32": np.int32}


def _spec_str(spec: TensorSpec) -> str:
    return f"{spec.name}[{', '.join(str(d) for d in spec.shape)}] {spec.dtype}"


def coerce_input(batch: Any, spec: TensorSpec, *, where: str = "input") -> np.ndarray:
    """Return ``batch`` as a C-contiguous array matching ``spec`` or raise EngineError.

    Allowed casts: any float array to the graph's float dtype (float64 -> float32 is the usual
    one), and int32 <-> int64 for integer inputs (token ids). Everything else (floats into an
    integer input, bools, strings, wrong rank or a wrong fixed dim) is an error naming the
    expected shape.
    """
    expected = _spec_str(spec)
    if not isinstance(batch, np.ndarray):
        try:
            batch = np.asarray(batch)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is the caller's error
            raise EngineError(f"{where}: cannot convert {type(batch).__name__} to an array; expected {expected}") from exc
    if batch.ndim != len(spec.shape):
        raise EngineError(
            f"{where}: got shape {tuple(batch.shape)} (rank {batch.ndim}); expected {expected} "
            f"(rank {len(spec.shape)}, batch first)"
        )
    for axis, (got, want) in enumerate(zip(batch.shape, spec.shape)):
        if isinstance(want, int) and got != want:
            raise EngineError(f"{where}: dim {axis} is {got}, expected {want}; expected shape {expected}")
    if batch.shape[0] == 0:
        raise EngineError(f"{where}: empty batch (dim 0 is 0); expected {expected} with at least one sample")
    if spec.dtype in _FLOAT_DTYPES:
        if not np.issubdtype(batch.dtype, np.floating):
            raise EngineError(f"{where}: dtype {batch.dtype} given; expected a float array for {expected}")
        target = _FLOAT_DTYPES[spec.dtype]
    elif spec.dtype in _INT_DTYPES:
        if not np.issubdtype(batch.dtype, np.integer) or batch.dtype.itemsize < 4:
            raise EngineError(f"{where}: dtype {batch.dtype} given; expected int32 or int64 token ids for {expected}")
        target = _INT_DTYPES[spec.dtype]
    else:
        target = np.dtype(spec.dtype).type
        if batch.dtype != target:
            raise EngineError(f"{where}: dtype {batch.dtype} given; expected {expected}")
    return np.ascontiguousarray(batch, dtype=target)


class Engine(abc.ABC):
    """One tower of a bundle, ready to run on one backend.

    Attributes (set by the backend's constructor):
        modality: the tower.
        backend: one of ``BACKENDS``.
        precision / form: the manifest artifact that runs ("fp16" / "fp16", "int8" / "int8-qdq", ...).
        input_spec / output_spec: the graph's interface from the manifest.
        reason: why this backend and artifact were chosen (shown by the CLI and ``repr``).
        last_latency_s: wall time of the last ``run`` (None before the first).
    """

    modality: Modality
    backend: str
    precision: str
    form: str
    input_spec: TensorSpec
    output_spec: TensorSpec
    reason: str
    last_latency_s: float | None

    def __init__(
        self,
        *,
        modality: Modality | str,
        backend: str,
        precision: str,
        form: str,
        input_spec: TensorSpec,
        output_spec: TensorSpec,
        reason: str = "",
    ) -> None:
        if backend not in BACKENDS:
            raise EngineError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")
        self.modality = Modality.parse(modality)
        self.backend = backend
        self.precision = precision
        self.form = form
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.reason = reason
        self.last_latency_s = None
        self._closed = False

    # -- what a backend implements -------------------------------------------------------------
    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a validated batch (dtype and rank already match ``input_spec``); return [B, D]."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Free sessions, contexts and device memory. Called once by ``close()``."""

    # -- shared behaviour ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embed one batch: ``[B, *input dims]`` -> ``[B, D]`` float32."""
        if self._closed:
            raise EngineError(f"{self!r} is closed; open a new engine")
        array = coerce_input(batch, self.input_spec, where=f"{self.modality.value} input {self.input_spec.name!r}")
        start = time.perf_counter()
        out = self._infer(array)
        self.last_latency_s = time.perf_counter() - start
        out = np.asarray(out)
        if out.ndim != 2 or out.shape[0] != array.shape[0]:
            raise EngineError(
                f"{self.backend} returned shape {tuple(out.shape)} for a batch of {array.shape[0]}; "
                f"expected [B, D] like {_spec_str(self.output_spec)}"
            )
        return out.astype(np.float32, copy=False)

    def example_input(self, batch_size: int = 1) -> np.ndarray:
        """A deterministic input of the right shape and dtype (zeros; token ids 0) for warm-up."""
        dims = [batch_size if i == 0 else (d if isinstance(d, int) else 1) for i, d in enumerate(self.input_spec.shape)]
        return np.zeros(dims, dtype=np.dtype(self.input_spec.dtype))

    def warmup(self, iterations: int = 2, batch_size: int = 1) -> None:
        """Run ``iterations`` throw-away batches (first-run allocations, lazy engine builds, autotuning)."""
        if iterations < 0:
            raise EngineError(f"warmup iterations must be >= 0, got {iterations}")
        example = self.example_input(batch_size)
        for _ in range(iterations):
            self.run(example)
        logger.debug("%r warmed up (%d runs, last %.4f s)", self, iterations, self.last_latency_s or 0.0)

    def close(self) -> None:
        """Release the backend's resources. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the supported way
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return (
            f"{type(self).__name__}({self.modality.value}, backend={self.backend}, "
            f"{self.precision}/{self.form}{state})"
        )
