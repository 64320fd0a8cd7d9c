"""Microphone input through python-sounddevice (PortAudio), resampled to 16 kHz with soxr.

The PortAudio callback runs in a real-time thread and only copies its block into a bounded ring
(``ring_s`` seconds of blocks) with the block's capture time; the source thread drains the ring every
``chunk_s``, resamples with a streaming soxr resampler (``quality`` "HQ"; state is kept across chunks,
so there are no seams) and emits float32 ``[n]`` (mono) or ``[n, ch]`` chunks at ``meta["rate"]``.

Capture time: the first sample of a block was captured at ``monotonic_now - (currentTime -
inputBufferAdcTime)`` (PortAudio's stream clock gives the ADC delay; when it reports zeros,
``frames / rate`` is used). ``t_device`` is ``inputBufferAdcTime`` (stream clock) of the chunk's first
block. A chunk's ``t_capture`` is its first block's, minus nothing for the resampler delay (soxr HQ
adds well under 10 ms).

Counted: PortAudio input overflows (``overflows``, also added to ``dropped``), and blocks the ring had
to discard because the source thread fell behind (``dropped``). A stream that stops delivering blocks
for ``stall_timeout_s`` or turns inactive is a disconnect: it is closed and reopened with backoff.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Callable, Optional, Union

import numpy as np

from ..._config import ConfigMixin
from ..._lazy import require
from ...errors import ConfigError, StreamError
from ...modality import Modality
from .base import ClockConfig, RetryPolicy, StreamSource

StreamFactory = Callable[..., Any]
"""Keyword args of ``sounddevice.InputStream`` -> an object with start/stop/close and ``active``."""


@dataclasses.dataclass(frozen=True)
class MicrophoneConfig(ConfigMixin):
    device: Optional[str] = None
    """PortAudio device index or name substring; None: the default input."""
    rate: Optional[int] = None
    """Capture rate; None: the device's default rate."""
    channels: int = 1
    out_rate: Optional[int] = 16000
    """Delivered rate (soxr resampling); None: deliver the capture rate unchanged."""
    chunk_s: float = 0.1
    blocksize: int = 0
    """PortAudio block size in frames; 0 lets PortAudio choose."""
    ring_s: float = 2.0
    stall_timeout_s: float = 2.0
    quality: str = "HQ"

    def __post_init__(self) -> None:
        if self.channels < 1 or not self.chunk_s > 0 or self.ring_s < self.chunk_s:
            raise ConfigError(f"MicrophoneConfig: expected channels >= 1, chunk_s > 0, ring_s >= chunk_s; got "
                              f"{self.channels!r}, {self.chunk_s!r}, {self.ring_s!r}")


class _Ring:
    """Bounded FIFO of (t_first, t_adc, block) filled by the audio callback."""

    def __init__(self, max_frames: int):
        self.max_frames = max_frames
        self._blocks: collections.deque = collections.deque()
        self._frames = 0
        self._lock = threading.Lock()
        self.discarded = 0
        self.t_last_block = time.monotonic()

    def push(self, t_first: float, t_adc: Optional[float], block: np.ndarray) -> None:
        with self._lock:
            self._blocks.append((t_first, t_adc, block))
            self._frames += len(block)
            while self._frames > self.max_frames and len(self._blocks) > 1:
                _, _, old = self._blocks.popleft()
                self._frames -= len(old)
                self.discarded += 1
            self.t_last_block = time.monotonic()

    def drain(self) -> list[tuple[float, Optional[float], np.ndarray]]:
        with self._lock:
            blocks = list(self._blocks)
            self._blocks.clear()
            self._frames = 0
            return blocks


class MicrophoneSource(StreamSource):
    """Audio chunks from a sounddevice input stream (see the module docstring)."""

    def __init__(self, config: MicrophoneConfig | None = None, *, name: str = "microphone",
                 stream_factory: Optional[StreamFactory] = None, retry: RetryPolicy | None = None,
                 clock: ClockConfig | None = None):
        super().__init__(name, Modality.AUDIO, retry=retry, clock=clock or ClockConfig(max_jump_s=5.0))
        self.config = config or MicrophoneConfig()
        self._factory = stream_factory
        self._stream: Any = None
        self._ring: Optional[_Ring] = None
        self._resampler: Any = None
        self._rate = 0
        self.overflows = 0
        self._discarded_seen = 0

    def _device(self) -> Union[int, str, None]:
        d = self.config.device
        return int(d) if d is not None and d.isdigit() else d

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        if status and getattr(status, "input_overflow", False):
            self.overflows += 1
            self._count("dropped")
        adc = float(getattr(time_info, "inputBufferAdcTime", 0.0) or 0.0)
        cur = float(getattr(time_info, "currentTime", 0.0) or 0.0)
        delay = cur - adc if adc > 0 and cur >= adc else frames / float(self._rate or 1)
        assert self._ring is not None
        self._ring.push(now - delay, adc if adc > 0 else None, np.array(indata, dtype=np.float32, copy=True))

    def _open(self) -> None:
        c = self.config
        rate = c.rate
        if self._factory is None:
            sd = require("sounddevice", extra="sensors", purpose="microphone input")
            if rate is None:
                rate = int(sd.query_devices(self._device(), "input")["default_samplerate"])
            factory: StreamFactory = sd.InputStream
        else:
            factory = self._factory
            rate = rate or 48000
        self._rate = int(rate)
        self._ring = _Ring(int(c.ring_s * self._rate))
        self._discarded_seen = 0
        if c.out_rate and c.out_rate != self._rate:
            soxr = require("soxr", extra="sensors", purpose="audio resampling")
            self._resampler = soxr.ResampleStream(self._rate, c.out_rate, c.channels, dtype="float32", quality=c.quality)
        else:
            self._resampler = None
        stream = factory(samplerate=self._rate, blocksize=c.blocksize, device=self._device(), channels=c.channels,
                         dtype="float32", callback=self._callback)
        try:
            stream.start()
        except Exception:
            stream.close()
            raise
        self._stream = stream

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            finally:
                stream.close()

    def _read(self) -> None:
        if self.wait(self.config.chunk_s):
            return
        ring = self._ring
        assert ring is not None
        if ring.discarded != self._discarded_seen:
            self._count("dropped", ring.discarded - self._discarded_seen)
            self._discarded_seen = ring.discarded
        blocks = ring.drain()
        if not blocks:
            if not getattr(self._stream, "active", True) or time.monotonic() - ring.t_last_block > self.config.stall_timeout_s:
                raise StreamError(f"{self.name}: audio stream stopped delivering (device {self.config.device or 'default'})")
            return
        x = np.concatenate([b for _, _, b in blocks], axis=0)
        if x.ndim == 1:
            x = x[:, None]
        if not np.isfinite(x).all():
            self._reject("NaN/inf audio samples")
            return
        y = self._resampler.resample_chunk(x) if self._resampler is not None else x
        y = np.ascontiguousarray(y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y, dtype=np.float32)
        if y.size == 0:
            return
        rate = self.config.out_rate or self._rate
        self._emit(y, t_capture=blocks[0][0], t_device=blocks[0][1], meta={"rate": rate, "capture_rate": self._rate})
