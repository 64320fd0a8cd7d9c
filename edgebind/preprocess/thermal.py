"""Thermal (long-wave infrared) frames to the thermal tower's input, float32 [1, 224, 224].

ImageBind ships no thermal loader; it was trained on LLVIP (8-bit single-channel IR). Community
practice (research notes 1.6): PIL "L" image, ``Resize(224, bicubic)``, ``CenterCrop(224)``,
``ToTensor`` ([0, 1]) and **no mean/std normalisation** (62.4 % vs 55.2 % LLVIP with CLIP
normalisation, facebookresearch/ImageBind PR #73); ``mean``/``std`` remain configurable.

Inputs, by dtype:

- uint8 H x W (AGC video, LLVIP-like): /255, resized in Pillow's 8-bit "L" path, i.e. exactly the
  community pipeline.
- 16/32-bit integers H x W (raw radiometric Y16: 14-bit counts, or centi-kelvin with TLinear): mapped
  to [0, 1] by ``config.mode``: ``"minmax"`` stretches the frame's ``low_percentile`` ..
  ``high_percentile`` to 0..1 (default 1st/99th, robust to dead pixels and hot spots), ``"fixed"``
  maps ``fixed_low`` .. ``fixed_high`` (same units as the input, e.g. 27315..31315 centi-kelvin for
  0..40 C) to 0..1 so that brightness means the same temperature in every frame. Values outside are
  clipped. A flat frame (high == low) maps to 0. The mapped frame is resized in float (mode "F",
  overshoot clipped per pass as the 8-bit path does).
- float H x W already in [0, 1] (validated; anything else is refused).
- H x W x 3 colour-mapped frames (ironbow etc.) are refused: the palette is not invertible. Use the
  raw Y16 stream or a grayscale palette. H x W x 3 with three identical channels (gray stored as RGB)
  and H x W x 1 are accepted as gray.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal, Optional

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError, PreprocessError
from ._checks import as_array
from ._resize import check_resize_config, resize_short_side_center_crop

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ThermalConfig(ConfigMixin):
    """Thermal preprocessing parameters (recorded in the bundle manifest)."""

    mode: Literal["minmax", "fixed"] = "minmax"
    """How raw 16/32-bit frames map to [0, 1] (8-bit and float frames ignore it)."""
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    fixed_low: Optional[float] = None
    """Raw value mapped to 0 in "fixed" mode (input units: counts or centi-kelvin)."""
    fixed_high: Optional[float] = None
    mean: float = 0.0
    std: float = 1.0
    size: int = 224
    crop_size: int = 224

    def __post_init__(self) -> None:
        check_resize_config(self.size, self.crop_size, "ThermalConfig")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ConfigError(
                "ThermalConfig.low_percentile/high_percentile: expected 0 <= low < high <= 100, "
                f"got {self.low_percentile!r} / {self.high_percentile!r}"
            )
        if self.mode == "fixed":
            lo, hi = self.fixed_low, self.fixed_high
            if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise ConfigError(
                    "ThermalConfig.fixed_low/fixed_high: mode 'fixed' needs finite fixed_low < fixed_high, "
                    f"got {lo!r} / {hi!r}"
                )
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise ConfigError(
                f"ThermalConfig.mean/std: expected finite mean and positive std, got {self.mean!r} / {self.std!r}"
            )


def _as_gray(x: object) -> np.ndarray:
    arr = as_array(x, "frame", ndim=(2, 3), kinds="uif")
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels == 1:
            return arr[..., 0]
        if channels == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return arr[..., 0]
        raise PreprocessError(
            f"frame: expected a single-channel thermal image H x W, got shape {arr.shape}; colour-mapped frames "
            "(ironbow, rainbow...) cannot be inverted - use the camera's raw Y16 stream or a grayscale palette"
        )
    return arr


def to_unit_range(frame: np.ndarray, config: ThermalConfig) -> np.ndarray:
    """Map a raw integer frame to float32 [0, 1] with ``config.mode`` (see the module docstring)."""
    values = frame.astype(np.float64)
    if config.mode == "fixed":
        lo, hi = float(config.fixed_low), float(config.fixed_high)  # type: ignore[arg-type]
    else:
        lo, hi = (float(v) for v in np.percentile(values, [config.low_percentile, config.high_percentile]))
    if hi <= lo:
        logger.debug("thermal frame is flat (%s..%s); mapped to 0", lo, hi)
        return np.zeros(frame.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def preprocess(frame_hw: object, config: ThermalConfig | None = None) -> np.ndarray:
    """Thermal frame (uint8, raw 16-bit or float in [0, 1]; H x W) to float32 [1, crop, crop].

    See the module docstring for the per-dtype rules. Raises PreprocessError for colour-mapped
    frames, floats outside [0, 1], NaN/inf, empty or wrongly shaped input.
    """
    config = config or ThermalConfig()
    gray = _as_gray(frame_hw)
    size, crop = config.size, config.crop_size
    if gray.dtype == np.uint8:
        unit = resize_short_side_center_crop(gray, size, crop, "bicubic").astype(np.float32) / np.float32(255.0)
    else:
        if gray.dtype.kind == "f":
            lo, hi = float(gray.min()), float(gray.max())
            if lo < 0.0 or hi > 1.0:
                raise PreprocessError(
                    f"frame: float thermal frames must already lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; "
                    "pass raw integer counts (e.g. uint16 Y16) to use ThermalConfig.mode 'minmax' or 'fixed'"
                )
            mapped = gray.astype(np.float32)
        else:
            mapped = to_unit_range(gray, config)
        unit = resize_short_side_center_crop(mapped, size, crop, "bicubic", clip_unit=True)
    return ((unit - np.float32(config.mean)) / np.float32(config.std))[None].astype(np.float32)
