"""Legacy implicit-INT8 calibration for TensorRT 8.5-10.x: an entropy calibrator fed from our shards.

Explicit Q/DQ ONNX (the ``int8-qdq`` artifact) is edgebind's INT8 path and the only one TensorRT 11
accepts. Users on JetPack 5/6 who ask for implicit INT8 (``int8_mode="calibrator"``) get this:
``trt.IInt8EntropyCalibrator2`` (the calibrator NVIDIA recommends, and the one DLA requires) fed with
the calibration split of a ``CalibrationSet``, with a calibration cache file so later builds skip
calibration. TensorRT deprecated calibrators in 10.1 and removed them (and
``IBuilderConfig.int8_calibrator``) in 11.0; ``make_entropy_calibrator`` refuses there with a
message saying what to use instead.

The calibrator class is defined inside the factory because its base class lives in ``tensorrt``;
importing this module needs neither tensorrt nor CUDA.

TensorRT calls, in order: ``read_calibration_cache()`` (bytes -> calibration is skipped), else
``get_batch_size()`` and ``get_batch(names)`` until it returns None (each batch copied into a device
buffer whose address is returned), then ``write_calibration_cache(cache)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from ..errors import CalibrationError, EngineError
from .cache import calibration_cache_path
from .cuda_buffers import BufferPool, CudaRuntime

logger = logging.getLogger(__name__)


def calibrator_supported(trt: Any) -> bool:
    """True where this TensorRT still has implicit INT8 calibration (8.x-10.x, gone in 11)."""
    return hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(getattr(trt, "IBuilderConfig", None), "int8_calibrator")


def calibration_batches(data: np.ndarray, batch_size: int, max_batches: int | None = None) -> list[np.ndarray]:
    """Whole batches of ``batch_size`` rows (a short remainder is dropped: TensorRT needs full batches)."""
    if batch_size < 1:
        raise CalibrationError(f"calibration batch size must be >= 1, got {batch_size}")
    n = len(data) // batch_size
    if n == 0:
        raise CalibrationError(
            f"calibration needs at least one full batch of {batch_size} rows; the shard has {len(data)} "
            "(lower calibration_batch_size or add calibration data with `edgebind calibrate`)"
        )
    if max_batches is not None:
        n = min(n, max_batches)
    dropped = len(data) - n * batch_size
    if dropped:
        logger.info("calibration: using %d batches of %d rows, %d rows left out", n, batch_size, dropped)
    return [np.ascontiguousarray(data[i * batch_size : (i + 1) * batch_size]) for i in range(n)]


def make_entropy_calibrator(
    trt: Any,
    cuda: CudaRuntime,
    data: np.ndarray,
    *,
    input_name: str,
    input_dtype: Any,
    batch_size: int,
    cache_path: str | os.PathLike[str],
    max_batches: int | None = None,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``data`` rows for the network input ``input_name``.

    ``input_dtype`` is the network input's numpy dtype (token ids arrive as int64 and are fed as
    int32 where TensorRT made the input INT32). ``cache_path`` is read first and written after
    calibration (atomically). Call ``.close()`` after the build to free the device buffer.
    """
    if not calibrator_supported(trt):
        raise EngineError(
            f"TensorRT {trt.__version__} has no implicit INT8 calibration (IInt8EntropyCalibrator2 and "
            "IBuilderConfig.int8_calibrator were removed in TensorRT 11); use the bundle's int8-qdq "
            "artifact (int8_mode='qdq'), which is explicitly quantized"
        )
    dtype = np.dtype(input_dtype)
    if np.issubdtype(dtype, np.integer) and np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(dtype)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise CalibrationError(f"calibration data for {input_name!r} does not fit {dtype}")
    batches = calibration_batches(np.asarray(data), batch_size, max_batches)
    base = trt.IInt8EntropyCalibrator2
    cache_path = Path(cache_path)

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds calibration batches to TensorRT through one reused device buffer."""

        def __init__(self) -> None:
            base.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            self.batches = batches
            self.index = 0
            self.cache_path = cache_path
            self.cache_was_read = False
            self._pool = BufferPool(cuda)
            self._stream = cuda.create_stream()

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
            if self.index >= len(self.batches):
                return None
            if input_name not in names:
                raise EngineError(f"calibration: TensorRT asked for inputs {names}, expected {input_name!r}")
            batch = self.batches[self.index].astype(dtype, copy=False)
            buf = self._pool.get(input_name, batch.shape, dtype)
            buf.host[...] = batch
            cuda.memcpy_htod_async(buf.device, buf.host, self._stream)
            cuda.synchronize(self._stream)
            self.index += 1
            logger.debug("calibration batch %d/%d", self.index, len(self.batches))
            return [buf.device if name == input_name else 0 for name in names]

        def read_calibration_cache(self, *args: Any) -> bytes | None:
            if self.cache_path.is_file():
                self.cache_was_read = True
                logger.info("using INT8 calibration cache %s (calibration skipped)", self.cache_path)
                return self.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any, *args: Any) -> None:
            atomic_write_bytes(self.cache_path, bytes(cache))
            logger.info("wrote INT8 calibration cache %s", self.cache_path)

        def close(self) -> None:
            self._pool.close()
            if self._stream is not None:
                cuda.destroy_stream(self._stream)
                self._stream = None

    return EntropyCalibrator()


def attach_calibrator(trt: Any, trt_config: Any, builder: Any, cuda: CudaRuntime, key: Any, net_input: Any,
                      cache_dir: Path, calibration: str | None, batch: int, max_batches: int | None) -> tuple[Any, Path]:
    """Set an entropy calibrator over ``calibration``'s calib shard (and a static calibration profile of
    ``batch`` rows) on ``trt_config``; returns it (close it after the build) and its cache path."""
    from ..calibration import CalibrationSet

    calib = CalibrationSet.open(calibration)  # type: ignore[arg-type]
    shape = (batch, *key.profile_opt[1:])
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(key.input_name, shape, shape, shape)
    trt_config.set_calibration_profile(calib_profile)
    cache_path = calibration_cache_path(cache_dir, key, calibration_fingerprint(calib, key.modality))
    calibrator = make_entropy_calibrator(
        trt, cuda, calib.calib(key.modality), input_name=key.input_name, input_dtype=trt.nptype(net_input.dtype),
        batch_size=batch, cache_path=cache_path, max_batches=max_batches,
    )
    trt_config.int8_calibrator = calibrator
    return calibrator, cache_path


def calibration_fingerprint(calib: Any, modality: str) -> str:
    """What the calibration data of ``modality`` is (its calib shard's sha256); part of the cache key."""
    entry = calib.entry(modality)
    return str(entry["shards"]["calib"]["sha256"])
