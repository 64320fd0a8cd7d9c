"""Deterministic synthetic sources for tests and demos, with injectable faults.

Sample ``i`` has ``t_device = i / rate_hz`` and data that depends only on ``(seed, i)``: a moving
gradient (vision), a ramp of distances (depth, metres), a warm blob on a ~27 C background (thermal,
centi-kelvin uint16), a continuous 440 Hz tone (audio) and gravity plus a slow rotation (IMU).

Faults for tests: ``nan_every=k`` puts a NaN/garbage value into every k-th sample (rejected and
counted); ``clock_jump_at`` shifts ``t_device`` of the listed indices by +100 s (a clock jump);
``fail_at`` raises a simulated disconnect before the listed indices, once each (the source retries
with its backoff and then continues at the same index).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np

from ..._config import ConfigMixin
from ...errors import ConfigError
from ...modality import Modality
from .base import ClockConfig, EndOfStream, RetryPolicy, StreamSource


@dataclasses.dataclass(frozen=True)
class SyntheticConfig(ConfigMixin):
    modality: str = "vision"
    rate_hz: float = 30.0
    """Samples (frames, audio chunks, IMU chunks) per second."""
    count: Optional[int] = None
    """Number of samples before the source finishes; None: endless."""
    realtime: bool = True
    """Pace samples at ``rate_hz``; False delivers them as fast as possible."""
    seed: int = 0
    height: int = 48
    width: int = 64
    audio_rate: int = 16000
    imu_rate: float = 200.0
    nan_every: int = 0
    clock_jump_at: tuple[int, ...] = ()
    fail_at: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        Modality.parse(self.modality)
        if Modality.parse(self.modality) is Modality.TEXT:
            raise ConfigError("SyntheticConfig.modality: text is not a sensor modality")
        if not self.rate_hz > 0 or (self.count is not None and self.count < 0) or self.nan_every < 0:
            raise ConfigError(
                f"SyntheticConfig: expected rate_hz > 0, count >= 0, nan_every >= 0; got "
                f"{self.rate_hz!r}, {self.count!r}, {self.nan_every!r}"
            )


class SyntheticSource(StreamSource):
    """A deterministic fake sensor (see the module docstring)."""

    def __init__(
        self,
        config: SyntheticConfig | None = None,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        clock: ClockConfig | None = None,
    ):
        self.config = config or SyntheticConfig()
        modality = Modality.parse(self.config.modality)
        super().__init__(name or f"synthetic_{modality.value}", modality, retry=retry, clock=clock)
        self._index = 0
        self._failed: set[int] = set()
        self._t_next: Optional[float] = None

    def _open(self) -> None:
        self._t_next = None

    def _close(self) -> None:
        pass

    def _read(self) -> None:
        cfg = self.config
        i = self._index
        if cfg.count is not None and i >= cfg.count:
            raise EndOfStream()
        if i in cfg.fail_at and i not in self._failed:
            self._failed.add(i)
            raise ConnectionError(f"simulated disconnect before sample {i}")
        if cfg.realtime:
            now = time.monotonic()
            if self._t_next is None:
                self._t_next = now
            if self.wait(self._t_next - now):
                return
            self._t_next += 1.0 / cfg.rate_hz
        self._index += 1
        t_device = i / cfg.rate_hz + (100.0 if i in cfg.clock_jump_at else 0.0)
        data, meta = self.make(i)
        if cfg.nan_every and (i + 1) % cfg.nan_every == 0:
            data = data.astype(np.float32) if data.dtype.kind != "f" else data.copy()
            data.flat[0] = np.nan
        t_capture = time.monotonic()
        if self.modality is Modality.IMU:
            n = len(data)
            meta["t"] = t_capture + np.arange(n, dtype=np.float64) / cfg.imu_rate
        self._emit(data, t_capture=t_capture, t_device=t_device, meta=meta)

    def make(self, i: int) -> tuple[np.ndarray, dict]:
        """Data and meta of sample ``i`` (without injected faults)."""
        cfg = self.config
        h, w = cfg.height, cfg.width
        m = self.modality
        if m is Modality.VISION:
            yy, xx = np.mgrid[0:h, 0:w]
            r = (xx * 255 // max(1, w - 1) + i * 3 + cfg.seed) % 256
            g = (yy * 255 // max(1, h - 1) + i * 5) % 256
            b = np.full((h, w), (i * 7 + cfg.seed * 11) % 256)
            return np.stack([r, g, b], axis=-1).astype(np.uint8), {"format": "rgb"}
        if m is Modality.DEPTH:
            xx = np.arange(w, dtype=np.float32)[None, :]
            depth = np.repeat(0.5 + 4.5 * xx / max(1, w - 1), h, axis=0) + 0.01 * (i % 10)
            depth[: max(1, h // 10), : max(1, w // 10)] = 0.0  # an invalid patch
            return depth.astype(np.float32), {"fx": 0.8 * w, "baseline": 0.05}
        if m is Modality.THERMAL:
            yy, xx = np.mgrid[0:h, 0:w]
            cy, cx = h / 2, (i * 2) % w
            blob = 1000.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * (h / 6) ** 2))
            return (30015 + blob).astype(np.uint16), {"format": "y16", "kelvin_scale": 0.01, "kelvin_offset": 0.0}
        if m is Modality.AUDIO:
            n = int(round(cfg.audio_rate / cfg.rate_hz))
            k = np.arange(i * n, (i + 1) * n, dtype=np.float64)
            return (0.25 * np.sin(2 * np.pi * 440.0 * k / cfg.audio_rate)).astype(np.float32), {"rate": cfg.audio_rate}
        if m is Modality.IMU:
            n = max(1, int(round(cfg.imu_rate / cfg.rate_hz)))
            k = np.arange(i * n, (i + 1) * n, dtype=np.float64) / cfg.imu_rate
            rows = np.zeros((n, 6), dtype=np.float64)
            rows[:, 0] = 0.1 * np.sin(k)
            rows[:, 2] = 9.80665
            rows[:, 5] = 0.5 * np.cos(0.5 * k)
            return rows, {"rate": cfg.imu_rate}
        raise ConfigError(f"no synthetic data for modality {m.value!r}")  # pragma: no cover
