"""Depth cameras: Intel RealSense (pyrealsense2), 16-bit frames through OpenCV, or frame files.

Every backend delivers float32 H x W **metres** (0 = invalid) with ``meta["fx"]`` (focal length in
pixels of that map) and ``meta["baseline"]`` (metres) when known, so the pipeline can turn metres
into the disparity the bundle's depth tower expects (``edgebind.preprocess.depth.preprocess(depth,
fx, baseline, config)`` with the manifest's DepthConfig). ``fx`` / ``baseline`` in the config
override what the device reports.

- ``realsense``: ``rs.pipeline`` with a z16 depth stream; metres = units x the sensor's depth scale;
  ``fx`` from the stream intrinsics; ``baseline`` from the ``stereo_baseline`` option (mm) when the
  device has it. Global time is enabled where supported, so ``t_device`` (frame timestamp / 1000)
  is host-comparable; ``meta["time_domain"]`` names the domain.
- ``opencv``: a capture that yields 16-bit frames (e.g. OpenNI2 or a UVC Z16 device), times
  ``depth_scale`` (default 0.001: millimetres).
- ``files``: a folder of ``*.npy`` (float metres, or integers times ``depth_scale``) or 16-bit
  ``*.png`` (times ``depth_scale``), in name order, at ``fps`` when ``pace``.
- ``auto``: realsense when pyrealsense2 is installed and ``target`` is empty or a serial number,
  files when ``target`` is a folder, opencv otherwise.

Frames with NaN/inf or negative values are rejected and counted (ROS 32FC1 NaN pixels should be set
to 0 before they get here).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from ..._config import ConfigMixin
from ..._lazy import is_available, require
from ...errors import ConfigError, StreamError
from ...modality import Modality
from .base import ClockConfig, EndOfStream, RetryPolicy, StreamSource
from .camera import CameraConfig, CaptureFactory, CaptureSource


@dataclasses.dataclass(frozen=True)
class DepthCameraConfig(ConfigMixin):
    backend: Literal["auto", "realsense", "opencv", "files"] = "auto"
    target: str = ""
    """RealSense serial number (empty: first device), OpenCV capture target, or a folder of frames."""
    width: int = 640
    height: int = 480
    fps: float = 30.0
    depth_scale: float = 0.001
    """Metres per unit for integer frames (opencv and files backends)."""
    fx: Optional[float] = None
    baseline: Optional[float] = None
    timeout_s: float = 1.0
    """RealSense: no frame for this long is an error (the device is reopened with backoff)."""
    pace: bool = True
    loop: bool = False

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        if self.target and os.path.isdir(self.target):
            return "files"
        if (not self.target or self.target.isalnum() and not self.target.isdigit()) and is_available("pyrealsense2"):
            return "realsense"
        if not self.target:
            raise ConfigError("DepthCameraConfig: backend 'auto' with no target needs pyrealsense2; "
                              "install edgebind[sensors] or give target (folder or OpenCV device)")
        return "opencv"


def _to_metres(frame: np.ndarray, depth_scale: float) -> np.ndarray:
    if frame.dtype.kind == "f":
        return frame.astype(np.float32, copy=False)
    return frame.astype(np.float32) * np.float32(depth_scale)


class _DepthMixin:
    def _depth_meta(self, fx: Optional[float], baseline: Optional[float]) -> dict[str, Any]:
        c: DepthCameraConfig = self.depth_config  # type: ignore[attr-defined]
        meta: dict[str, Any] = {}
        fx, baseline = c.fx or fx, c.baseline or baseline
        if fx:
            meta["fx"] = float(fx)
        if baseline:
            meta["baseline"] = float(baseline)
        return meta

    def _deliver(self, metres: np.ndarray, **kw: Any) -> None:
        if metres.ndim != 2:
            self._reject(f"depth frame shape {metres.shape}, expected H x W")  # type: ignore[attr-defined]
            return
        if not np.isfinite(metres).all() or (metres < 0).any():
            self._reject("depth frame with NaN/inf or negative values")  # type: ignore[attr-defined]
            return
        self._emit(metres, **kw)  # type: ignore[attr-defined]


class RealSenseDepthSource(_DepthMixin, StreamSource):
    def __init__(self, config: DepthCameraConfig, *, name: str = "depth", retry: RetryPolicy | None = None,
                 clock: ClockConfig | None = None):
        super().__init__(name, Modality.DEPTH, retry=retry, clock=clock)
        self.depth_config = config
        self._pipe: Any = None
        self._scale = 0.001
        self._meta: dict[str, Any] = {}

    def _open(self) -> None:
        rs = require("pyrealsense2", extra="sensors", purpose="RealSense depth")
        c = self.depth_config
        pipe, cfg = rs.pipeline(), rs.config()
        if c.target:
            cfg.enable_device(c.target)
        cfg.enable_stream(rs.stream.depth, c.width, c.height, rs.format.z16, int(c.fps))
        profile = pipe.start(cfg)
        try:
            sensor = profile.get_device().first_depth_sensor()
            self._scale = float(sensor.get_depth_scale())
            if sensor.supports(rs.option.global_time_enabled):
                sensor.set_option(rs.option.global_time_enabled, 1)
            baseline = sensor.get_option(rs.option.stereo_baseline) / 1000.0 if sensor.supports(rs.option.stereo_baseline) else None
            intr = profile.get_stream(rs.stream.depth).as_video_stream_profile().get_intrinsics()
            self._meta = self._depth_meta(intr.fx, baseline)
        except Exception:
            pipe.stop()
            raise
        self._pipe = pipe

    def _close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.stop()

    def _read(self) -> None:
        ok, frames = self._pipe.try_wait_for_frames(int(self.depth_config.timeout_s * 1000))
        if not ok:
            raise StreamError(f"{self.name}: no RealSense frame for {self.depth_config.timeout_s} s")
        t_capture = time.monotonic()
        depth = frames.get_depth_frame()
        if not depth:
            self._reject("frameset without a depth frame")
            return
        units = np.asanyarray(depth.get_data())
        meta = dict(self._meta, time_domain=str(depth.get_frame_timestamp_domain()).split(".")[-1],
                    frame_number=int(depth.get_frame_number()))
        self._deliver(units.astype(np.float32) * np.float32(self._scale), t_capture=t_capture,
                      t_device=depth.get_timestamp() / 1000.0, meta=meta)


class OpenCvDepthSource(_DepthMixin, CaptureSource):
    def __init__(self, config: DepthCameraConfig, *, name: str = "depth", capture_factory: Optional[CaptureFactory] = None,
                 retry: RetryPolicy | None = None, clock: ClockConfig | None = None):
        cam = CameraConfig(target=config.target, width=config.width, height=config.height, fps=config.fps, loop=config.loop)
        super().__init__(cam, name, Modality.DEPTH, capture_factory=capture_factory, retry=retry, clock=clock)
        self.depth_config = config

    def _configure(self, cv2: Any, cap: Any) -> None:
        cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        super()._configure(cv2, cap)

    def _convert(self, cv2: Any, frame: np.ndarray) -> Optional[tuple[np.ndarray, dict]]:
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 2:
            frame = np.ascontiguousarray(frame).view("<u2")[:, :, 0]
        if frame.ndim != 2 or frame.dtype not in (np.uint16, np.float32):
            self._reject(f"depth frame with shape {frame.shape} and dtype {frame.dtype}; expected 16-bit H x W")
            return None
        metres = _to_metres(frame, self.depth_config.depth_scale)
        if not np.isfinite(metres).all() or (metres < 0).any():
            self._reject("depth frame with NaN/inf or negative values")
            return None
        return metres, self._depth_meta(None, None)


class FileDepthSource(_DepthMixin, StreamSource):
    def __init__(self, config: DepthCameraConfig, *, name: str = "depth", retry: RetryPolicy | None = None,
                 clock: ClockConfig | None = None):
        super().__init__(name, Modality.DEPTH, retry=retry, clock=clock)
        self.depth_config = config
        self._files: list[Path] = []
        self._i = 0
        self._t_next: Optional[float] = None

    def _open(self) -> None:
        folder = Path(self.depth_config.target)
        self._files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".png")) if folder.is_dir() else []
        if not self._files:
            raise StreamError(f"{folder}: no *.npy or *.png depth frames")

    def _close(self) -> None:
        pass

    def _read(self) -> None:
        c = self.depth_config
        if self._i >= len(self._files):
            if not c.loop:
                raise EndOfStream()
            self._i = 0
        path = self._files[self._i]
        self._i += 1
        if c.pace:
            now = time.monotonic()
            self._t_next = now if self._t_next is None else self._t_next + 1.0 / c.fps
            if self.wait(self._t_next - now):
                return
        try:
            if path.suffix == ".npy":
                frame = np.load(path, allow_pickle=False)
            else:
                cv2 = require("cv2", extra="sensors", purpose="reading PNG depth frames")
                frame = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if frame is None:
                    raise ValueError("unreadable PNG")
        except (OSError, ValueError) as exc:
            self._reject(f"{path}: {exc}")
            return
        self._deliver(_to_metres(np.asarray(frame), c.depth_scale), meta=dict(self._depth_meta(None, None), file=path.name))


def DepthSource(config: DepthCameraConfig | None = None, *, name: str = "depth", retry: RetryPolicy | None = None,
                clock: ClockConfig | None = None, capture_factory: Optional[CaptureFactory] = None) -> StreamSource:
    """The depth source for ``config.backend`` (see the module docstring)."""
    config = config or DepthCameraConfig()
    backend = config.resolved_backend()
    if backend == "realsense":
        return RealSenseDepthSource(config, name=name, retry=retry, clock=clock)
    if backend == "files":
        return FileDepthSource(config, name=name, retry=retry, clock=clock)
    return OpenCvDepthSource(config, name=name, capture_factory=capture_factory, retry=retry, clock=clock)
