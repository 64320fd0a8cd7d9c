"""Cameras through OpenCV ``VideoCapture``: a device index, a video file, a URL or a GStreamer pipeline.

``CameraConfig.target``: ``"0"`` (``/dev/video0``), ``"/dev/video2"``, ``"clip.mp4"``, ``"rtsp://..."``,
or a GStreamer pipeline (any string containing ``!``; it must end in ``appsink``). For Jetson CSI
cameras :func:`jetson_csi_pipeline` builds the usual ``nvarguscamerasrc`` pipeline (needs OpenCV built
with GStreamer, as in JetPack's OpenCV; pip wheels have no GStreamer).

Frames are delivered as uint8 H x W x 3 RGB. ``t_device`` is OpenCV's ``CAP_PROP_POS_MSEC`` / 1000: the position in a file, or for a
device the V4L2 buffer time when positive (otherwise None). A frame that is
empty, has a different size than the first frame, or has an unexpected dtype is rejected and counted.
A file ends the stream (state ``"finished"``) unless ``loop``; a device that returns no frame
``max_read_failures`` times in a row is treated as disconnected and reopened with backoff.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Literal, Optional

import numpy as np

from ..._config import ConfigMixin
from ..._lazy import require
from ...errors import StreamError
from ...modality import Modality
from .base import ClockConfig, EndOfStream, RetryPolicy, StreamSource

CaptureFactory = Callable[[Any, int], Any]
"""(target, api_preference) -> an object with OpenCV VideoCapture's isOpened/read/get/set/release."""


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera (Argus) ending in a BGR appsink for OpenCV."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){fps}/1 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=2"
    )


@dataclasses.dataclass(frozen=True)
class CameraConfig(ConfigMixin):
    target: str = "0"
    api: Literal["auto", "v4l2", "gstreamer", "ffmpeg"] = "auto"
    width: Optional[int] = None
    height: Optional[int] = None
    fps: Optional[float] = None
    fourcc: Optional[str] = None
    """Pixel format to request from a device, e.g. "MJPG" (4 characters)."""
    loop: bool = False
    """Restart a video file at its end instead of finishing."""
    pace: bool = False
    """Deliver a video file at its frame rate (``fps`` or the file's) instead of as fast as possible."""
    max_read_failures: int = 10
    open_timeout_s: Optional[float] = 5.0
    read_timeout_s: Optional[float] = 5.0


def is_file_target(target: str) -> bool:
    return os.path.isfile(target) and not target.startswith("/dev/")


def _api_code(cv2: Any, api: str, target: str) -> int:
    if api == "auto":
        if "!" in target:
            return cv2.CAP_GSTREAMER
        return cv2.CAP_ANY
    return {"v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER, "ffmpeg": cv2.CAP_FFMPEG}[api]


class CaptureSource(StreamSource):
    """Shared OpenCV capture loop; subclasses convert raw frames in :meth:`_convert`."""

    def __init__(self, config: CameraConfig, name: str, modality: Modality, *, capture_factory: Optional[CaptureFactory] = None,
                 retry: RetryPolicy | None = None, clock: ClockConfig | None = None):
        super().__init__(name, modality, retry=retry, clock=clock)
        self.config = config
        self._factory = capture_factory
        self._cap: Any = None
        self._failures = 0
        self._shape: Optional[tuple[int, ...]] = None
        self._is_file = is_file_target(config.target)
        self._t_next: Optional[float] = None
        self._period: Optional[float] = None

    # -- hooks for subclasses
    def _configure(self, cv2: Any, cap: Any) -> None:
        """Set capture properties after opening (resolution, fps, fourcc)."""
        c = self.config
        if c.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*c.fourcc.ljust(4)[:4]))
        if c.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
        if c.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
        if c.fps:
            cap.set(cv2.CAP_PROP_FPS, c.fps)

    def _convert(self, cv2: Any, frame: np.ndarray) -> Optional[tuple[np.ndarray, dict]]:
        raise NotImplementedError

    # -- StreamSource hooks
    def _open(self) -> None:
        cv2 = require("cv2", extra="sensors", purpose=f"{self.modality.value} capture")
        c = self.config
        target: Any = int(c.target) if c.target.isdigit() else c.target
        api = _api_code(cv2, c.api, c.target)
        if self._factory is not None:
            cap = self._factory(target, api)
        else:
            params: list[int] = []
            if c.open_timeout_s and not self._is_file:
                params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(c.open_timeout_s * 1000)]
            if c.read_timeout_s and not self._is_file:
                params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(c.read_timeout_s * 1000)]
            cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
        if cap is None or not cap.isOpened():
            raise StreamError(f"{self.name}: cannot open {c.target!r} with OpenCV (api {c.api})")
        self._configure(cv2, cap)
        self._cap = cap
        self._failures = 0
        fps = c.fps or (cap.get(cv2.CAP_PROP_FPS) if self._is_file else None)
        self._period = 1.0 / fps if c.pace and fps and fps > 0 else None
        self._t_next = None

    def _close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _read(self) -> None:
        cv2 = require("cv2", extra="sensors")
        cap = self._cap
        ok, frame = cap.read()
        t_capture = time.monotonic()
        if not ok or frame is None:
            if self._is_file:
                if self.config.loop:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    return
                raise EndOfStream()
            self._failures += 1
            if self._failures >= self.config.max_read_failures:
                raise StreamError(f"{self.name}: no frame from {self.config.target!r} {self._failures} times in a row")
            self.wait(0.01)
            return
        self._failures = 0
        if self._period is not None:
            self._t_next = t_capture if self._t_next is None else self._t_next + self._period
            if self.wait(self._t_next - time.monotonic()):
                return
            t_capture = time.monotonic()
        if not isinstance(frame, np.ndarray) or frame.size == 0:
            self._reject("empty frame")
            return
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            self._reject(f"frame shape {frame.shape} differs from the stream's {self._shape}")
            return
        converted = self._convert(cv2, frame)
        if converted is None:
            return
        data, meta = converted
        pos = cap.get(cv2.CAP_PROP_POS_MSEC)
        t_device = pos / 1000.0 if pos is not None and (pos > 0 or (self._is_file and pos == 0)) else None
        self._emit(data, t_capture=t_capture, t_device=t_device, meta=meta)


class CameraSource(CaptureSource):
    """RGB frames from an OpenCV capture (see the module docstring)."""

    def __init__(self, config: CameraConfig | None = None, *, name: str = "camera", capture_factory: Optional[CaptureFactory] = None,
                 retry: RetryPolicy | None = None, clock: ClockConfig | None = None):
        super().__init__(config or CameraConfig(), name, Modality.VISION, capture_factory=capture_factory, retry=retry, clock=clock)

    def _convert(self, cv2: Any, frame: np.ndarray) -> Optional[tuple[np.ndarray, dict]]:
        if frame.dtype != np.uint8:
            self._reject(f"dtype {frame.dtype}, expected uint8")
            return None
        if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB), {"format": "rgb"}
        if frame.ndim == 3 and frame.shape[2] == 3:
            return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), {"format": "rgb"}
        if frame.ndim == 3 and frame.shape[2] == 4:
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB), {"format": "rgb"}
        self._reject(f"frame shape {frame.shape}, expected H x W x 3")
        return None
