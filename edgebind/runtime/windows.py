"""Per-modality input windows: bounded buffers that turn a stream of samples into one model input.

A window is fed by ``push(sample, t)`` from a source thread and read by ``take()`` from the modality's
worker. ``push`` only validates and stores (a few microseconds, under a short lock); the expensive
preprocessing happens in ``take`` on the worker thread, and only for the data that is actually
embedded: under overload the newest data wins and older data is never preprocessed.

What each window holds (all bounded):

- image (vision tower with a 4-D input), depth, thermal: the latest frame. A frame replaced before it
  was taken counts as ``stale`` when its slot had come (the worker was busy: overload) and as
  ``decimated`` otherwise (the sensor is faster than the target rate: expected).
- video (vision tower with a 5-D ``[B, 3, 2, H, W]`` input): the last two frames, paired by
  :class:`edgebind.preprocess.video.StreamingClip` (at most two raw frames are pending).
- audio: the last ``clip_duration`` seconds (2 s) through
  :class:`edgebind.preprocess.audio.AudioStreamPreprocessor`; raw chunks wait in a queue capped at
  one clip of input, older ones are dropped (``stale``; the resampler restarts) if the worker falls behind.
- imu: a ring of timestamped rows covering the model window (``window_length / target_rate`` =
  5 s for 2000 samples at 400 Hz), resampled by :func:`edgebind.preprocess.imu.preprocess_timestamped`.

Time. ``push`` takes ``t``, the sample's time on the runtime's data clock (``t_capture`` live,
see :mod:`edgebind.runtime.pipeline` for replay); chunked samples (audio, IMU) have ``t`` at their
first sample. ``WindowInput.t_data`` is the time of the newest data in the window (for audio the end
of the last chunk), from which ages and staleness are measured.

Preprocessing parameters come from the bundle manifest (``TowerRecord.preprocess``), see
:func:`make_window`.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import math
import threading
import time
from typing import Any, Mapping, Optional

import numpy as np

from .._config import ConfigMixin
from .._logging import log_once
from ..errors import ConfigError, PreprocessError
from ..modality import Modality
from ..preprocess import audio as audio_pp
from ..preprocess import depth as depth_pp
from ..preprocess import image as image_pp
from ..preprocess import imu as imu_pp
from ..preprocess import thermal as thermal_pp
from ..preprocess import video as video_pp

logger = logging.getLogger(__name__)

_RESAMPLER_MARGIN_S = 0.05

__all__ = [
    "WindowConfig",
    "WindowInput",
    "Window",
    "FrameWindow",
    "VideoWindow",
    "AudioWindow",
    "ImuWindow",
    "make_window",
    "preprocess_config",
]


@dataclasses.dataclass(frozen=True)
class WindowConfig(ConfigMixin):
    """Window settings that are not preprocessing parameters (those come from the manifest)."""

    depth_fx: Optional[float] = None
    """Focal length (pixels) used when a depth sample's meta has no ``fx``."""
    depth_baseline: Optional[float] = None
    """Stereo baseline (metres) used when a depth sample's meta has no ``baseline``."""
    imu_min_fill: float = 1.0
    """Fraction of the IMU model window (5 s) that must be buffered before the first IMU embedding;
    shorter history is left-padded by repeating the first row (see :mod:`edgebind.preprocess.imu`)."""
    imu_max_rate_hz: float = 1000.0
    """Highest IMU rate the ring is sized for (rows kept = 1.25 x window x this rate)."""
    video_span_s: Optional[float] = None
    """None: a video clip pairs the last two frames. A number: pairs the newest frame with the oldest
    within ``video_span_s`` (``StreamingClip(span_s=...)``; keeps span x fps preprocessed frames)."""

    def __post_init__(self) -> None:
        for name in ("depth_fx", "depth_baseline", "video_span_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"WindowConfig.{name}: expected a positive number or null, got {value!r}")
        if not 0.0 < self.imu_min_fill <= 1.0:
            raise ConfigError(f"WindowConfig.imu_min_fill: expected 0 < fill <= 1, got {self.imu_min_fill!r}")
        if not (math.isfinite(self.imu_max_rate_hz) and self.imu_max_rate_hz > 0):
            raise ConfigError(f"WindowConfig.imu_max_rate_hz: expected a positive rate, got {self.imu_max_rate_hz!r}")


@dataclasses.dataclass(frozen=True)
class WindowInput:
    """One model input taken from a window."""

    modality: Modality
    batch: np.ndarray
    """The model input with a batch axis of 1, e.g. float32 [1, 3, 224, 224]."""
    t_data: float
    """Data-clock time of the newest data in the window (seconds)."""
    t_arrival: float
    """``time.monotonic()`` when that newest data reached the runtime."""
    seq: int
    """``Sample.seq`` of the newest sample in the window."""
    source: str
    preprocess_s: float
    """Wall time spent preprocessing this input."""


class Window(abc.ABC):
    """A bounded buffer for one modality (see the module docstring). ``push`` may be called from a source
    thread while one worker calls ``take``; ``_preprocess`` runs outside the lock, in the worker only."""

    modality: Modality

    def __init__(self, modality: Modality) -> None:
        self.modality = modality
        self._lock = threading.Lock()
        self._version = 0  # bumped by every accepted push
        self._taken = 0  # version at the last take
        self.pushed = 0
        self.rejected = 0
        self.stale = 0
        """Data replaced before it was embedded although its slot had come (the worker was busy)."""
        self.decimated = 0
        """Frames replaced before their slot came (the target rate is below the sensor rate)."""
        self.due_at = -math.inf
        """Set by the scheduler: data newer than this is due for embedding (it splits stale/decimated)."""
        self._last_arrival = 0.0
        self._arrival_interval: float | None = None  # exponential mean of the time between pushes
        self._last_seq = -1
        self._last_source = ""

    # -- sink side ---------------------------------------------------------------------------
    def push(self, sample: Any, t: float) -> bool:
        """Store one sample at data time ``t``; False (and ``rejected`` + 1) when its data is unusable."""
        arrival = time.monotonic()
        try:
            prepared = self._validate(sample, t)
        except PreprocessError as exc:
            with self._lock:
                self.rejected += 1
            log_once(logger, logging.WARNING, "%s window: rejected a sample from %r: %s",
                     self.modality.value, getattr(sample, "source", "?"), exc)
            return False
        with self._lock:
            self._store(prepared, sample, t)
            self._version += 1
            self.pushed += 1
            if self._last_arrival > 0.0:
                gap = arrival - self._last_arrival
                prev = self._arrival_interval
                self._arrival_interval = gap if prev is None else 0.8 * prev + 0.2 * gap
            self._last_arrival = arrival
            self._last_seq = int(sample.seq)
            self._last_source = str(sample.source)
        return True

    def _count_replaced(self, t_old: float) -> None:
        if t_old >= self.due_at - 1e-6:  # the scheduler's tolerance for float sums of periods
            self.stale += 1
        else:
            self.decimated += 1

    @property
    def has_new(self) -> bool:
        """True when data arrived since the last ``take``."""
        return self._version != self._taken

    @property
    def last_arrival(self) -> float:
        """``time.monotonic()`` of the newest accepted push (0.0 before the first)."""
        return self._last_arrival

    @property
    def arrival_interval(self) -> float | None:
        """Exponential mean (weight 0.2 on the newest) of the seconds between accepted pushes (None before the
        second)."""
        return self._arrival_interval

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """True once enough data is buffered for a first input."""

    # -- worker side -------------------------------------------------------------------------
    def take(self) -> Optional[WindowInput]:
        """The model input built from the newest data, or None when not ready / nothing new.

        Raises PreprocessError when the buffered data cannot be preprocessed (the caller counts it).
        """
        with self._lock:
            if not self.has_new or not self.ready:
                return None
            self._taken = self._version
            raw = self._snapshot()
            meta = (self._newest_t(), self._last_arrival, self._last_seq, self._last_source)
        start = time.perf_counter()
        x = self._preprocess(raw)
        elapsed = time.perf_counter() - start
        if x is None:
            return None
        t_data, arrival, seq, source = meta
        return WindowInput(self.modality, np.ascontiguousarray(x[None]), t_data, arrival, seq, source, elapsed)

    # -- what a window implements --------------------------------------------------------------
    @abc.abstractmethod
    def _validate(self, sample: Any, t: float) -> Any:
        """Cheap checks on the sample; returns what ``_store`` keeps. Raises PreprocessError."""

    @abc.abstractmethod
    def _store(self, prepared: Any, sample: Any, t: float) -> None:
        """Keep the data (called under the lock)."""

    @abc.abstractmethod
    def _snapshot(self) -> Any:
        """What ``_preprocess`` needs, copied or referenced under the lock."""

    @abc.abstractmethod
    def _preprocess(self, raw: Any) -> Optional[np.ndarray]:
        """The model input without the batch axis, or None if not enough data (called without the lock)."""

    @abc.abstractmethod
    def _newest_t(self) -> float:
        """Data time of the newest data (under the lock)."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes of raw data currently held (for memory checks)."""
        return 0


def _check_frame(sample: Any, kinds: str, ndim: tuple[int, ...], what: str) -> np.ndarray:
    data = sample.data
    if not isinstance(data, np.ndarray) or data.dtype.kind not in kinds or data.ndim not in ndim or data.size == 0:
        raise PreprocessError(
            f"{what}: expected a non-empty {' or '.join(f'{d}-D' for d in ndim)} array of kind {kinds!r}, got "
            f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        )
    if data.dtype.kind == "f" and what != "depth" and not np.isfinite(data).all():
        raise PreprocessError(f"{what}: contains NaN/inf")
    return data


class FrameWindow(Window):
    """Latest frame only: image (vision 4-D input), depth and thermal."""

    def __init__(self, modality: Modality, config: Any, window_config: WindowConfig | None = None) -> None:
        super().__init__(modality)
        if modality not in (Modality.VISION, Modality.DEPTH, Modality.THERMAL):
            raise ConfigError(f"FrameWindow: modality {modality.value!r} is not a frame modality")
        self.config = config
        self.window_config = window_config or WindowConfig()
        self._frame: Optional[tuple[np.ndarray, Mapping[str, Any], float]] = None

    @property
    def ready(self) -> bool:
        return self._frame is not None

    def _validate(self, sample: Any, t: float) -> Any:
        if self.modality is Modality.VISION:
            data = _check_frame(sample, "uf", (2, 3), "vision frame")
            if data.ndim == 3 and data.shape[2] not in (1, 3, 4):
                raise PreprocessError(f"vision frame: expected H x W x 3 RGB, got shape {data.shape}")
        elif self.modality is Modality.DEPTH:
            data = _check_frame(sample, "uif", (2, 3), "depth")
            self._depth_geometry(sample.meta)  # fail at push time, not on the worker
        else:
            data = _check_frame(sample, "uif", (2, 3), "thermal frame")
        return data

    def _depth_geometry(self, meta: Mapping[str, Any]) -> tuple[float, float]:
        fx = meta.get("fx", self.window_config.depth_fx)
        baseline = meta.get("baseline", self.window_config.depth_baseline)
        if fx is None or baseline is None:
            raise PreprocessError(
                "depth: needs the focal length and baseline; the sample meta has no 'fx'/'baseline' and "
                "WindowConfig.depth_fx/depth_baseline are not set (--depth-fx/--depth-baseline)"
            )
        return float(fx), float(baseline)

    def _store(self, prepared: Any, sample: Any, t: float) -> None:
        if self._frame is not None and self.has_new:
            self._count_replaced(self._frame[2])
        self._frame = (prepared, sample.meta, t)

    def _snapshot(self) -> Any:
        return self._frame

    def _newest_t(self) -> float:
        assert self._frame is not None
        return self._frame[2]

    def _preprocess(self, raw: Any) -> np.ndarray:
        frame, meta, _ = raw
        if self.modality is Modality.VISION:
            return image_pp.preprocess(frame, self.config)
        if self.modality is Modality.DEPTH:
            fx, baseline = self._depth_geometry(meta)
            return depth_pp.preprocess(frame, fx, baseline, self.config)
        return thermal_pp.preprocess(frame, self.config)

    @property
    def buffered_bytes(self) -> int:
        frame = self._frame
        return 0 if frame is None else int(frame[0].nbytes)


class VideoWindow(Window):
    """The last two frames as one clip [3, 2, crop, crop] (vision towers with a 5-D input)."""

    def __init__(self, config: video_pp.VideoConfig | None = None, window_config: WindowConfig | None = None) -> None:
        super().__init__(Modality.VISION)
        self.window_config = window_config or WindowConfig()
        self._clip = video_pp.StreamingClip(config, span_s=self.window_config.video_span_s)
        self._pending: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self._newest = -math.inf

    @property
    def ready(self) -> bool:
        return bool(self._pending) or len(self._clip) > 0

    def _validate(self, sample: Any, t: float) -> Any:
        data = _check_frame(sample, "uf", (2, 3), "vision frame")
        if self.window_config.video_span_s is not None and not t > self._newest:
            raise PreprocessError(f"vision frame: time {t} does not follow the previous frame's {self._newest}")
        return data

    def _store(self, prepared: Any, sample: Any, t: float) -> None:
        self._pending.append((prepared, t))
        # Only the frames the clip can still use are kept: two for last-two pairing; with a span, the
        # pending frames are pushed on take, so keep those within the span of the newest.
        keep = 2 if self.window_config.video_span_s is None else None
        while keep is not None and len(self._pending) > keep:
            self._count_replaced(self._pending.popleft()[1])
        if keep is None:
            span = float(self.window_config.video_span_s)  # type: ignore[arg-type]
            while len(self._pending) > 1 and self._pending[0][1] < t - span:
                self._count_replaced(self._pending.popleft()[1])
        self._newest = t

    def _snapshot(self) -> Any:
        frames = list(self._pending)
        self._pending.clear()
        return frames

    def _newest_t(self) -> float:
        return self._newest

    def _preprocess(self, raw: Any) -> np.ndarray:
        for frame, t in raw:
            self._clip.push(frame, t)
        return self._clip.clip()

    @property
    def buffered_bytes(self) -> int:
        return sum(int(f.nbytes) for f, _ in list(self._pending))


class AudioWindow(Window):
    """The last ``clip_duration`` seconds as a melspec [1, 128, 204] (one clip, the audio tower's input)."""

    def __init__(self, config: audio_pp.AudioConfig | None = None) -> None:
        super().__init__(Modality.AUDIO)
        self.config = config or audio_pp.AudioConfig()
        self._pending: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self._pending_samples = 0
        self._rate: Optional[float] = None
        self._channels: Optional[int] = None
        self._stream: Optional[audio_pp.AudioStreamPreprocessor] = None
        self._newest = -math.inf
        self._restart = False
        self._span = 0.0  # seconds of audio fed to the stream preprocessor since its (re)start

    def _needed_s(self, rate: float | None) -> float:
        # A resampling stream holds back its filter delay (~25 ms at 48 -> 16 kHz): ask for a little more.
        margin = 0.0 if rate == self.config.sample_rate else _RESAMPLER_MARGIN_S
        return self.config.clip_duration + margin

    @property
    def ready(self) -> bool:
        # Ready once the stream preprocessor plus the pending chunks hold a full clip.
        buffered = self._span + self._pending_samples / (self._rate or 1.0)
        return buffered >= self._needed_s(self._rate) - 1e-9

    def _validate(self, sample: Any, t: float) -> Any:
        data = _check_frame(sample, "uif", (1, 2), "audio chunk")
        rate = sample.meta.get("rate")
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise PreprocessError(f"audio chunk: meta['rate'] must give the sample rate in Hz, got {rate!r}") from None
        if not (math.isfinite(rate) and rate > 0):
            raise PreprocessError(f"audio chunk: meta['rate'] must be a positive rate, got {rate!r}")
        if data.ndim == 2 and data.shape[1] > data.shape[0]:
            raise PreprocessError(f"audio chunk: expected [samples, channels], got shape {data.shape}")
        return data, rate

    def _store(self, prepared: Any, sample: Any, t: float) -> None:
        data, rate = prepared
        channels = 1 if data.ndim == 1 else int(data.shape[1])
        if self._rate != rate or self._channels != channels:
            if self._rate is not None:
                logger.info("audio window: stream changed to %g Hz x %d channel(s); restarting", rate, channels)
            self._pending.clear()
            self._pending_samples = 0
            self._restart = True
            self._span = 0.0
            self._rate, self._channels = rate, channels
        self._pending.append((data, t))
        self._pending_samples += data.shape[0]
        # Bound the queue: only the newest clip of input matters; older chunks are dropped and the
        # stream preprocessor restarted on the next take (its ring would otherwise hold a gap).
        limit = int(math.ceil(self._needed_s(rate) * rate))
        while len(self._pending) > 1 and self._pending_samples - self._pending[0][0].shape[0] >= limit:
            old, _ = self._pending.popleft()
            self._pending_samples -= old.shape[0]
            self.stale += 1
            self._restart = True
            self._span = 0.0
        self._newest = t + data.shape[0] / rate

    def _snapshot(self) -> Any:
        chunks = [c for c, _ in self._pending]
        restart, rate = self._restart, self._rate
        self._pending.clear()
        self._span = min((0.0 if restart else self._span) + self._pending_samples / (rate or 1.0), 1e9)
        self._pending_samples = 0
        self._restart = False
        return chunks, restart, rate

    def _newest_t(self) -> float:
        return self._newest

    def _preprocess(self, raw: Any) -> np.ndarray:
        chunks, restart, rate = raw
        if restart or self._stream is None or self._stream.input_rate != rate:
            self._stream = audio_pp.AudioStreamPreprocessor(self.config, input_rate=rate)
        for chunk in chunks:
            self._stream.push(chunk)
        return self._stream.window()  # None while the resampler still holds back part of the clip

    @property
    def buffered_bytes(self) -> int:
        return sum(int(c.nbytes) for c, _ in list(self._pending)) + 4 * self.config.clip_samples


class ImuWindow(Window):
    """Timestamped IMU rows in a fixed ring; ``take`` resamples the newest model window (5 s)."""

    def __init__(self, config: imu_pp.ImuConfig | None = None, window_config: WindowConfig | None = None) -> None:
        super().__init__(Modality.IMU)
        self.config = config or imu_pp.ImuConfig()
        self.window_config = window_config or WindowConfig()
        self.window_s = self.config.window_length / self.config.target_rate
        capacity = int(math.ceil(1.25 * self.window_s * self.window_config.imu_max_rate_hz)) + 1
        self._ring = np.zeros((capacity, 7), dtype=np.float64)  # t, then six channels
        self._write = 0
        self._count = 0
        self.rejected_rows = 0

    @property
    def capacity(self) -> int:
        return int(self._ring.shape[0])

    def _oldest_newest(self) -> tuple[float, float]:
        newest = self._ring[(self._write - 1) % self.capacity, 0]
        oldest = self._ring[(self._write - self._count) % self.capacity, 0]
        return float(oldest), float(newest)

    @property
    def ready(self) -> bool:
        if self._count < 2:
            return False
        oldest, newest = self._oldest_newest()
        step = (newest - oldest) / (self._count - 1)
        return newest - oldest + step >= self.window_config.imu_min_fill * self.window_s - 1e-9

    def _validate(self, sample: Any, t: float) -> Any:
        data = _check_frame(sample, "uif", (2,), "imu rows")
        if data.shape[1] != 6:
            raise PreprocessError(f"imu rows: expected [n, 6] (ax, ay, az, gx, gy, gz), got shape {data.shape}")
        meta_t = sample.meta.get("t")
        if meta_t is not None:
            rel = np.asarray(meta_t, dtype=np.float64)
            if rel.shape != (data.shape[0],) or not np.isfinite(rel).all():
                raise PreprocessError(f"imu rows: meta['t'] must hold {data.shape[0]} finite times, got {rel.shape}")
            times = t + (rel - rel[0])  # per-row offsets on the runtime's data clock
        else:
            rate = sample.meta.get("rate")
            if not isinstance(rate, (int, float)) or not rate > 0:
                raise PreprocessError("imu rows: need per-row times in meta['t'] or a rate in meta['rate']")
            times = t + np.arange(data.shape[0], dtype=np.float64) / float(rate)
        return times, np.asarray(data, dtype=np.float64)

    def _store(self, prepared: Any, sample: Any, t: float) -> None:
        times, rows = prepared
        last = self._ring[(self._write - 1) % self.capacity, 0] if self._count else -math.inf
        # Rows must be strictly increasing in time (preprocess_timestamped's rule); drop the others.
        keep = times > np.maximum.accumulate(np.concatenate([[last], times]))[:-1]
        if not keep.all():
            self.rejected_rows += int((~keep).sum())
            log_once(logger, logging.WARNING, "imu window: dropped rows whose time does not increase (source %r)",
                     str(sample.source))
        block = np.concatenate([times[keep, None], rows[keep]], axis=1)[-self.capacity :]
        n = block.shape[0]
        first = min(n, self.capacity - self._write)
        self._ring[self._write : self._write + first] = block[:first]
        self._ring[: n - first] = block[first:]
        self._write = (self._write + n) % self.capacity
        self._count = min(self._count + n, self.capacity)

    def _snapshot(self) -> Any:
        idx = (self._write - self._count + np.arange(self._count)) % self.capacity
        rows = self._ring[idx]
        newest = rows[-1, 0]
        # Keep what the model window needs, plus one row before it for the interpolation.
        start = max(0, int(np.searchsorted(rows[:, 0], newest - self.window_s, side="left")) - 1)
        return rows[start:].copy()

    def _newest_t(self) -> float:
        return float(self._ring[(self._write - 1) % self.capacity, 0])

    def _preprocess(self, raw: Any) -> np.ndarray:
        return imu_pp.preprocess_timestamped(raw[:, 0], raw[:, 1:], self.config)

    @property
    def buffered_bytes(self) -> int:
        return int(self._ring.nbytes)


_CONFIG_CLASSES: dict[str, type] = {
    "ImageConfig": image_pp.ImageConfig,
    "VideoConfig": video_pp.VideoConfig,
    "AudioConfig": audio_pp.AudioConfig,
    "DepthConfig": depth_pp.DepthConfig,
    "ThermalConfig": thermal_pp.ThermalConfig,
    "ImuConfig": imu_pp.ImuConfig,
}

_DEFAULT_CONFIG: dict[Modality, type] = {
    Modality.VISION: image_pp.ImageConfig,
    Modality.AUDIO: audio_pp.AudioConfig,
    Modality.DEPTH: depth_pp.DepthConfig,
    Modality.THERMAL: thermal_pp.ThermalConfig,
    Modality.IMU: imu_pp.ImuConfig,
}


def preprocess_config(modality: Modality, record: Mapping[str, Any] | None, *, video: bool = False) -> Any:
    """Rebuild the preprocessing config object the bundle recorded (``TowerRecord.preprocess``).

    An empty record gives the defaults (logged). A video tower fed by a recorded ``ImageConfig``
    gets a ``VideoConfig`` with the same size, crop, mean and std.
    """
    modality = Modality.parse(modality)
    wanted = video_pp.VideoConfig if video else _DEFAULT_CONFIG.get(modality)
    if wanted is None:
        raise ConfigError(f"no runtime window for modality {modality.value!r}")
    if not record:
        logger.info("%s tower: the manifest records no preprocessing parameters; using %s defaults",
                    modality.value, wanted.__name__)
        return wanted()
    name = record.get("config_class")
    cls = _CONFIG_CLASSES.get(str(name))
    if cls is None:
        raise ConfigError(f"manifest towers.{modality.value}.preprocess.config_class: unknown {name!r}; "
                          f"expected one of {sorted(_CONFIG_CLASSES)}")
    config = cls.from_dict(record.get("config", {}), where=f"manifest towers.{modality.value}.preprocess.config")
    if video and cls is image_pp.ImageConfig:
        return video_pp.VideoConfig(size=config.size, crop_size=config.crop_size, mean=config.mean, std=config.std)
    if cls is not wanted:
        raise ConfigError(f"manifest towers.{modality.value}.preprocess.config_class: {name!r} does not fit "
                          f"the {modality.value} window (expected {wanted.__name__})")
    return config


def make_window(
    modality: Modality | str,
    input_shape: tuple[Any, ...] | list[Any],
    preprocess: Mapping[str, Any] | None = None,
    config: WindowConfig | None = None,
) -> Window:
    """The window for one tower, from its input shape (4-D vision = image, 5-D = video) and manifest record."""
    modality = Modality.parse(modality)
    config = config or WindowConfig()
    if modality is Modality.VISION:
        video = len(input_shape) == 5
        pp = preprocess_config(modality, preprocess, video=video)
        return VideoWindow(pp, config) if video else FrameWindow(modality, pp, config)
    pp = preprocess_config(modality, preprocess)
    if modality in (Modality.DEPTH, Modality.THERMAL):
        return FrameWindow(modality, pp, config)
    if modality is Modality.AUDIO:
        return AudioWindow(pp)
    if modality is Modality.IMU:
        return ImuWindow(pp, config)
    raise ConfigError(f"no runtime window for modality {modality.value!r} (text is not a sensor stream)")
