"""UVC thermal cameras (FLIR Lepton on PureThermal, Boson, ...) through OpenCV, raw 16-bit first.

With ``y16=True`` the capture is asked for the ``Y16`` fourcc with ``CAP_PROP_CONVERT_RGB`` off, so
frames arrive as 16-bit counts (14-bit sensor values, or centi-kelvin on radiometric Leptons with
TLinear on). OpenCV backends hand such frames over in several layouts; all become uint16 H x W:
uint16 H x W (x 1), uint8 H x W x 2 (little-endian byte pairs), or a flat uint8 buffer of
``2 * width * height`` bytes (``width``/``height`` must then be set).

OpenCV does not deliver Y16 from every camera/backend (research notes 5 mention libuvc or V4L2 as
the reliable paths); check ``meta["format"]`` of the first samples.

Fallback: 8-bit frames (AGC video) are delivered as uint8 H x W (``meta["format"] = "u8"``); a
3-channel frame is accepted when its channels are equal (gray as BGR). A colour-mapped frame (ironbow
etc.) is rejected and counted, as the palette cannot be inverted, unless ``colormap_to_gray`` (then
its luminance is used; for display only, not temperature).

Radiometry: ``radiometric`` "centikelvin" / "decikelvin" / "linear" (``kelvin_scale``,
``kelvin_offset``) puts ``kelvin_scale`` and ``kelvin_offset`` into ``meta`` so that
``kelvin = raw * kelvin_scale + kelvin_offset`` (:func:`to_celsius`); the frame itself stays raw, as
the contract requires.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal, Optional

import numpy as np

from ...errors import StreamError
from ...modality import Modality
from .base import ClockConfig, RetryPolicy, Sample
from .camera import CameraConfig, CaptureFactory, CaptureSource

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ThermalCameraConfig(CameraConfig):
    target: str = "0"
    y16: bool = True
    radiometric: Literal["none", "centikelvin", "decikelvin", "linear"] = "none"
    kelvin_scale: float = 0.01
    kelvin_offset: float = 0.0
    colormap_to_gray: bool = False


def to_celsius(sample: Sample) -> np.ndarray:
    """Degrees Celsius of a radiometric thermal sample (raises StreamError when it is not radiometric)."""
    scale, offset = sample.meta.get("kelvin_scale"), sample.meta.get("kelvin_offset", 0.0)
    if scale is None:
        raise StreamError(f"{sample.source}: sample has no kelvin_scale in meta; set radiometric= on the thermal source")
    return sample.data.astype(np.float32) * float(scale) + float(offset) - 273.15


class ThermalSource(CaptureSource):
    """Thermal frames from a UVC camera (see the module docstring)."""

    def __init__(self, config: ThermalCameraConfig | None = None, *, name: str = "thermal",
                 capture_factory: Optional[CaptureFactory] = None, retry: RetryPolicy | None = None,
                 clock: ClockConfig | None = None):
        super().__init__(config or ThermalCameraConfig(), name, Modality.THERMAL, capture_factory=capture_factory,
                         retry=retry, clock=clock)
        self.config: ThermalCameraConfig
        self._warned = False

    def _configure(self, cv2: Any, cap: Any) -> None:
        if self.config.y16:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"Y16 "))
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        super()._configure(cv2, cap)

    def _radiometry(self) -> dict[str, Any]:
        c = self.config
        scale = {"centikelvin": 0.01, "decikelvin": 0.1, "linear": c.kelvin_scale}.get(c.radiometric)
        if scale is None:
            return {}
        return {"kelvin_scale": scale, "kelvin_offset": c.kelvin_offset if c.radiometric == "linear" else 0.0}

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            logger.warning("%s: %s", self.name, message)
            self._warned = True

    def _convert(self, cv2: Any, frame: np.ndarray) -> Optional[tuple[np.ndarray, dict]]:
        c = self.config
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.dtype == np.uint16 and frame.ndim == 2:
            return frame, {"format": "y16", **self._radiometry()}
        if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 2:
            return np.ascontiguousarray(frame).view("<u2")[:, :, 0], {"format": "y16", **self._radiometry()}
        if frame.dtype == np.uint8 and c.y16 and c.width and c.height and frame.size == 2 * c.width * c.height:
            return np.frombuffer(frame.tobytes(), dtype="<u2").reshape(c.height, c.width).copy(), {"format": "y16", **self._radiometry()}
        if frame.dtype == np.uint8 and frame.ndim == 2:
            if c.y16:
                self._warn_once("camera delivers 8-bit frames, not Y16; using them (AGC video, no temperatures)")
            return frame, {"format": "u8"}
        if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
            if (frame[:, :, 0] == frame[:, :, 1]).all() and (frame[:, :, 1] == frame[:, :, 2]).all():
                return np.ascontiguousarray(frame[:, :, 0]), {"format": "u8"}
            if c.colormap_to_gray:
                return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), {"format": "u8", "colormapped": True}
            self._warn_once("colour-mapped frames cannot be turned back into temperatures; select a Y16 or gray "
                            "format (or colormap_to_gray=True); rejecting them")
            self._reject("colour-mapped thermal frame")
            return None
        self._reject(f"thermal frame with shape {frame.shape} and dtype {frame.dtype}")
        return None
