"""IMU samples to the IMU tower's input: float32 [6, 2000] (accelerometer x, y, z, gyroscope x, y, z).

ImageBind ships no IMU loader. The paper cut Ego4D IMU into 5-s clips of 2000 steps, i.e. about
400 Hz (research notes 1.7); the exact rate, channel order, units and any gravity removal are
**unknown**. The defaults here are assumptions made explicit and recorded in the manifest:
400 Hz x 2000 samples, channels ax, ay, az, gx, gy, gz in m/s^2 and rad/s (the ROS ``sensor_msgs/Imu``
units), gravity kept, no normalisation.

Steps: reorder columns (``channel_order`` names what each input column holds), convert units, resample
each channel to ``target_rate`` with linear interpolation (``np.interp``) on a grid that ends at the
newest sample, keep the last ``window_length`` samples (the most recent 5 s, what a live robot
needs). A recording shorter than the window is left-padded by repeating its first sample (a
still-standing history rather than zeros, which would read as free fall). Optional per-channel
normalisation: ``"window"`` standardises each channel over the window, ``"fixed"`` uses
``mean``/``std`` from the config.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Literal

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError, PreprocessError
from ._checks import as_array, positive

logger = logging.getLogger(__name__)

CHANNELS: tuple[str, ...] = ("ax", "ay", "az", "gx", "gy", "gz")
"""Model channel order: accelerometer x, y, z then gyroscope x, y, z."""
STANDARD_GRAVITY = 9.80665  # m/s^2 per g
_WINDOW_STD_FLOOR = 1e-6  # a channel that does not move stays 0 instead of dividing by ~0


@dataclasses.dataclass(frozen=True)
class ImuConfig(ConfigMixin):
    """IMU preprocessing parameters (recorded in the bundle manifest). Rate and units are assumptions."""

    target_rate: float = 400.0
    window_length: int = 2000
    channel_order: tuple[str, ...] = CHANNELS
    """What each input column holds, e.g. ("gx", "gy", "gz", "ax", "ay", "az") for gyro-first data."""
    accel_unit: Literal["m/s^2", "g"] = "m/s^2"
    gyro_unit: Literal["rad/s", "deg/s"] = "rad/s"
    normalization: Literal["none", "window", "fixed"] = "none"
    mean: tuple[float, ...] = (0.0,) * 6
    std: tuple[float, ...] = (1.0,) * 6

    def __post_init__(self) -> None:
        rate = self.target_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"ImuConfig.target_rate: expected a positive rate in Hz, got {self.target_rate!r}")
        if isinstance(self.window_length, bool) or not isinstance(self.window_length, int) or self.window_length < 1:
            raise ConfigError(f"ImuConfig.window_length: expected a positive integer, got {self.window_length!r}")
        if sorted(self.channel_order) != sorted(CHANNELS):
            raise ConfigError(
                f"ImuConfig.channel_order: expected a permutation of {list(CHANNELS)}, got {list(self.channel_order)}"
            )
        if len(self.mean) != 6 or len(self.std) != 6 or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(
                "ImuConfig.mean/std: expected 6 values each (model channel order), std > 0; "
                f"got {self.mean} / {self.std}"
            )


def _as_samples(samples: object) -> np.ndarray:
    arr = as_array(samples, "samples", ndim=2, kinds="uif")
    if arr.shape[1] != 6:
        hint = " (channel-first? transpose it to [N, 6])" if arr.shape[0] == 6 else ""
        raise PreprocessError(
            f"samples: expected shape [N, 6] (N samples x accel x,y,z + gyro x,y,z), got {arr.shape}{hint}"
        )
    return arr.astype(np.float64)


def to_model_channels(samples: np.ndarray, config: ImuConfig) -> np.ndarray:
    """[N, 6] input columns -> [N, 6] in model order (ax..gz) and units (m/s^2, rad/s)."""
    order = [config.channel_order.index(name) for name in CHANNELS]
    out = samples[:, order].copy()
    if config.accel_unit == "g":
        out[:, :3] *= STANDARD_GRAVITY
    if config.gyro_unit == "deg/s":
        out[:, 3:] *= math.pi / 180.0
    return out


def _resample_window(t_s: np.ndarray, values: np.ndarray, config: ImuConfig) -> np.ndarray:
    """Linear interpolation onto ``window_length`` points at ``target_rate`` ending at ``t_s[-1]``: [6, L]."""
    steps_back = np.arange(config.window_length - 1, -1, -1, dtype=np.float64)
    grid = t_s[-1] - steps_back / config.target_rate
    # np.interp holds the first value before t_s[0]: that is the documented left padding.
    window = np.stack([np.interp(grid, t_s, values[:, c]) for c in range(6)])
    if config.normalization == "window":
        mean = window.mean(axis=1, keepdims=True)
        std = np.maximum(window.std(axis=1, keepdims=True), _WINDOW_STD_FLOOR)
        window = (window - mean) / std
    elif config.normalization == "fixed":
        window = (window - np.asarray(config.mean)[:, None]) / np.asarray(config.std)[:, None]
    return window.astype(np.float32)


def preprocess(samples_nx6: object, sample_rate: float, config: ImuConfig | None = None) -> np.ndarray:
    """Regularly sampled IMU data [N, 6] at ``sample_rate`` Hz to float32 [6, window_length].

    The newest sample is the last row. See the module docstring for order, units, resampling and
    padding rules. Raises PreprocessError for a wrong column count, NaN/inf, empty input or a
    non-positive rate.
    """
    config = config or ImuConfig()
    sample_rate = positive(sample_rate, "sample_rate")
    values = to_model_channels(_as_samples(samples_nx6), config)
    t_s = np.arange(values.shape[0], dtype=np.float64) / sample_rate
    return _resample_window(t_s, values, config)


def preprocess_timestamped(t_s: object, samples_nx6: object, config: ImuConfig | None = None) -> np.ndarray:
    """Irregularly sampled IMU data: times ``t_s`` [N] (seconds, strictly increasing) and samples [N, 6].

    Same output and rules as :func:`preprocess`; the resampling grid ends at ``t_s[-1]``.
    """
    config = config or ImuConfig()
    values = to_model_channels(_as_samples(samples_nx6), config)
    times = as_array(t_s, "t_s", ndim=1, kinds="uif").astype(np.float64)
    if times.shape[0] != values.shape[0]:
        raise PreprocessError(f"t_s: expected {values.shape[0]} timestamps (one per sample row), got {times.shape[0]}")
    steps = np.diff(times)
    if np.any(steps <= 0):
        bad = int(np.argmax(steps <= 0)) + 1
        raise PreprocessError(
            f"t_s: timestamps must be strictly increasing; t_s[{bad}] = {times[bad]} follows {times[bad - 1]}"
        )
    return _resample_window(times, values, config)
