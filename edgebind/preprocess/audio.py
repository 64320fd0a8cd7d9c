"""Audio preprocessing for the ImageBind audio tower: waveform -> float32 ``[3, 1, 128, 204]``.

Reference pipeline (research notes, imagebind.md section 1.4): resample to 16 kHz; cut 3 clips of
2 s at uniformly spaced starts; per clip subtract the mean, take a 128-bin Kaldi log mel filterbank
(25 ms / 10 ms, Hann window, see ``fbank``), transpose to ``[128, frames]``, right-pad with zeros or
crop to 204 frames, and normalise with ``(x - (-4.268)) / 9.138``. Padded frames therefore hold 0.467.

Deliberate differences from the reference, none of which changes the features beyond float rounding:

* Resampling uses soxr ("HQ") instead of torchaudio's windowed-sinc resampler (Hann, width 6,
  rolloff 0.99). soxr is maintained, fast, has aarch64 (Jetson) wheels and needs no torch. Both are
  band-limiting resamplers; they differ slightly near 8 kHz, where the mel filters end.
* Multi-channel input: the reference subtracts the mean over *all* channels of a clip and then
  computes features from channel 0 only. We do the same. Because ``remove_dc_offset`` subtracts each
  frame's own mean before anything else, any constant shift of the clip (this one, or the clip mean,
  or the reference's repeated in-place mean subtraction on overlapping clips) cancels exactly.
* Clips shorter than one 400-sample window, which crash the reference, are zero-padded to one window.
"""

from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction

import numpy as np

from .._config import ConfigMixin
from .._lazy import require
from .._logging import log_once
from ..errors import ConfigError, PreprocessError
from ._checks import as_array, positive
from .fbank import FbankOptions, fbank

logger = logging.getLogger(__name__)

__all__ = [
    "AudioConfig",
    "AudioStreamPreprocessor",
    "clip_starts",
    "pcm_to_float",
    "preprocess",
    "resample",
    "waveform_to_melspec",
]

_RESAMPLE_QUALITY = "HQ"


@dataclasses.dataclass(frozen=True)
class AudioConfig(ConfigMixin):
    """ImageBind audio settings; ``to_dict()`` is what the bundle manifest records."""

    sample_rate: int = 16000
    clip_duration: float = 2.0
    clips_per_input: int = 3
    num_mel_bins: int = 128
    target_length: int = 204
    mean: float = -4.268
    std: float = 9.138
    fbank: FbankOptions = dataclasses.field(default_factory=FbankOptions)

    def __post_init__(self) -> None:
        for name in ("sample_rate", "clips_per_input", "num_mel_bins", "target_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"AudioConfig.{name}: expected a positive integer, got {value!r}")
        if not self.clip_duration > 0:
            raise ConfigError(f"AudioConfig.clip_duration: expected > 0 seconds, got {self.clip_duration!r}")
        if not self.std > 0:
            raise ConfigError(f"AudioConfig.std: expected > 0, got {self.std!r}")
        if self.fbank.sample_frequency != self.sample_rate:
            raise ConfigError(
                f"AudioConfig.fbank.sample_frequency: expected {self.sample_rate} (= sample_rate),"
                f" got {self.fbank.sample_frequency}"
            )
        if self.fbank.num_mel_bins != self.num_mel_bins:
            raise ConfigError(
                f"AudioConfig.fbank.num_mel_bins: expected {self.num_mel_bins} (= num_mel_bins),"
                f" got {self.fbank.num_mel_bins}"
            )
        if self.clip_samples < 1:
            raise ConfigError(f"AudioConfig.clip_duration: {self.clip_duration} s is less than one sample")

    @property
    def clip_samples(self) -> int:
        """Samples in one clip at ``sample_rate`` (32000 for 2 s at 16 kHz)."""
        return int(Fraction(self.clip_duration) * self.sample_rate)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Shape ``preprocess`` returns: ``(clips_per_input, 1, num_mel_bins, target_length)``."""
        return (self.clips_per_input, 1, self.num_mel_bins, self.target_length)


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM (int8/16/32/64, uint8/...) scaled to [-1, 1) float32; floats are cast to float32.

    Signed ``b``-bit integers are divided by ``2**(b-1)``; unsigned ones (8-bit WAV is unsigned) are
    centred on ``2**(b-1)`` first.
    """
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    half = float(2 ** (8 * samples.dtype.itemsize - 1))
    if samples.dtype.kind == "u":
        return ((samples.astype(np.float64) - half) / half).astype(np.float32)
    return (samples.astype(np.float64) / half).astype(np.float32)


def resample(waveform: np.ndarray, orig_rate: float, target_rate: float = 16000) -> np.ndarray:
    """Resample 1-D or ``[samples, channels]`` audio with soxr (quality "HQ"); returns float32.

    Integer PCM is scaled to [-1, 1] first (see ``pcm_to_float``). The reference uses torchaudio's
    sinc resampler; soxr differs from it slightly, mostly in the transition band near Nyquist.
    Equal rates return the (float32) input without filtering.
    """
    x = as_array(waveform, "waveform", ndim=(1, 2), kinds="uif")
    orig = positive(orig_rate, "orig_rate")
    target = positive(target_rate, "target_rate")
    x = pcm_to_float(x)
    if orig == target:
        return np.array(x, dtype=np.float32, copy=True)
    soxr = require("soxr", purpose="audio resampling")
    out = soxr.resample(np.ascontiguousarray(x), orig, target, quality=_RESAMPLE_QUALITY)
    return np.asarray(out, dtype=np.float32)


def _clip_starts_exact(duration: Fraction, clip_duration: Fraction, clips: int) -> list[Fraction]:
    # Exact rationals, so int(t * rate) never lands one sample early through float rounding.
    span = max(duration - clip_duration, Fraction(0))
    if clips == 1:
        return [Fraction(0)]
    return [span * i / (clips - 1) for i in range(clips)]


def clip_starts(duration_s: float, clip_duration: float = 2.0, clips: int = 3) -> list[float]:
    """Clip start times in seconds: ``i * max(D - clip_duration, 0) / (clips - 1)`` for ``i < clips``.

    For ``D <= clip_duration`` every clip starts at 0; a single clip starts at 0.
    """
    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 1:
        raise PreprocessError(f"clips: expected a positive integer, got {clips!r}")
    positive(clip_duration, "clip_duration")
    duration = float(duration_s)
    if not np.isfinite(duration) or duration < 0:
        raise PreprocessError(f"duration_s: expected a finite duration >= 0 seconds, got {duration_s!r}")
    return [float(t) for t in _clip_starts_exact(Fraction(duration), Fraction(clip_duration), clips)]


def _clip_bounds(num_samples: int, config: AudioConfig) -> list[tuple[int, int]]:
    """Sample ranges ``[start, end)`` of the clips, cut at ``int(t * sample_rate)``."""
    rate = config.sample_rate
    clip = Fraction(config.clip_duration)
    starts = _clip_starts_exact(Fraction(num_samples, rate), clip, config.clips_per_input)
    return [(int(t * rate), min(int((t + clip) * rate), num_samples)) for t in starts]


def _melspec_of_centred(mono: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Fbank, transpose, pad/crop and normalise an already mean-subtracted mono clip."""
    window = config.fbank.frame_length
    if mono.shape[0] < window:
        log_once(
            logger,
            logging.WARNING,
            "audio clip shorter than one %d-sample fbank window; zero-padding it to one window"
            " (the reference crashes here; later short clips are padded without this warning)",
            window,
        )
        mono = np.concatenate([mono, np.zeros(window - mono.shape[0], dtype=mono.dtype)])
    feats = fbank(mono, config.fbank).T  # [mel, frames]
    frames = feats.shape[1]
    pad = config.target_length - frames
    if abs(pad) / frames > 0.2:
        logger.debug(
            "audio clip gives %d fbank frames, %s to %d (more than 20%%)",
            frames,
            "padded" if pad > 0 else "cropped",
            config.target_length,
        )
    if pad > 0:
        feats = np.pad(feats, ((0, 0), (0, pad)))
    else:
        feats = feats[:, : config.target_length]
    # float64, then one rounding: float32 arithmetic (as in the reference) can be 1 ulp off, e.g. 0.46706066
    # instead of 0.46706063 for a padded frame; irrelevant for the model, but this keeps the value exact.
    out = (feats.astype(np.float64) - config.mean) / config.std
    return out[None].astype(np.float32)


def waveform_to_melspec(clip_1d: np.ndarray, config: AudioConfig | None = None) -> np.ndarray:
    """One mono clip at ``config.sample_rate`` -> normalised float32 ``[1, num_mel_bins, target_length]``.

    Subtracts the clip mean, computes the Kaldi fbank, transposes to ``[mel, frames]``, right-pads
    with zeros (which become ``-mean/std`` = 0.467 after normalisation) or crops to
    ``target_length`` frames. A clip shorter than one fbank window is zero-padded to one window.
    """
    config = config or AudioConfig()
    x = as_array(clip_1d, "clip_1d", ndim=1, kinds="uif")
    x = pcm_to_float(x).astype(np.float64)
    return _melspec_of_centred(x - x.mean(), config)


def _as_samples_by_channels(waveform: object, name: str) -> np.ndarray:
    x = as_array(waveform, name, ndim=(1, 2), kinds="uif")
    if x.ndim == 2 and x.shape[1] > x.shape[0]:
        raise PreprocessError(
            f"{name}: expected [samples, channels], got shape {x.shape} (more channels than samples;"
            " a torchaudio-style [channels, samples] array must be transposed)"
        )
    return x if x.ndim == 2 else x[:, None]


def preprocess(waveform: np.ndarray, sample_rate: float, config: AudioConfig | None = None) -> np.ndarray:
    """Waveform -> float32 ``[clips_per_input, 1, num_mel_bins, target_length]`` (``[3, 1, 128, 204]``).

    ``waveform`` is mono 1-D or ``[samples, channels]``, float in [-1, 1] or integer PCM, at
    ``sample_rate`` Hz. It is resampled to ``config.sample_rate``; the clips are cut at
    ``int(t * 16000)`` sample indices with the starts of ``clip_starts``. Per clip the mean over
    all channels is subtracted and features are taken from channel 0 only, as in the reference.
    """
    config = config or AudioConfig()
    x = _as_samples_by_channels(waveform, "waveform")
    rate = positive(sample_rate, "sample_rate")
    num_input = x.shape[0]
    x = resample(x, rate, config.sample_rate)
    if x.shape[0] == 0:
        raise PreprocessError(
            f"waveform: {num_input} sample(s) at {rate} Hz is too short to resample to {config.sample_rate} Hz"
        )
    clips = []
    for start, end in _clip_bounds(x.shape[0], config):
        clip = x[start:end].astype(np.float64)
        clips.append(_melspec_of_centred(clip[:, 0] - clip.mean(), config))
    return np.stack(clips).astype(np.float32, copy=False)


class AudioStreamPreprocessor:
    """Melspec of the latest ``clip_duration`` seconds of a live stream (e.g. a microphone).

    ``push`` resamples incrementally (``soxr.ResampleStream``) into a ring holding the last
    ``clip_duration`` seconds at ``config.sample_rate``; ``window`` returns that span's
    ``[1, num_mel_bins, target_length]`` melspec, or None until the ring is full. The streaming
    resampler holds back its filter delay (measured 341-441 output samples, 21-28 ms, for 48 -> 16 kHz
    "HQ", depending on chunk sizes) until more input arrives; ``flush()`` releases it at the end of a stream.
    """

    def __init__(self, config: AudioConfig | None = None, input_rate: float = 16000):
        self.config = config or AudioConfig()
        self.input_rate = positive(input_rate, "input_rate")
        self._capacity = self.config.clip_samples
        self._ring: np.ndarray | None = None  # [capacity, channels], allocated on the first push
        self._write = 0  # next write position in the ring
        self._total = 0  # samples written since the start (or reset)
        self._resampler: object | None = None
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def samples_buffered(self) -> int:
        """Resampled samples available in the ring (at most one clip)."""
        return min(self._total, self._capacity)

    def reset(self) -> None:
        """Forget all audio and the resampler state (e.g. after a gap in the stream)."""
        self._ring, self._write, self._total, self._resampler, self._cached = None, 0, 0, None, None

    def push(self, samples: np.ndarray) -> None:
        """Append 1-D or ``[samples, channels]`` audio at ``input_rate`` (float or integer PCM)."""
        x = as_array(samples, "samples", ndim=(1, 2), kinds="uif", allow_empty=True)
        if x.ndim == 1:
            x = x[:, None]
        channels = x.shape[1]
        if self._ring is not None and channels != self._ring.shape[1]:
            raise PreprocessError(
                f"samples: expected {self._ring.shape[1]} channel(s) as in earlier pushes, got {channels}"
            )
        self._write_resampled(self._resample_chunk(pcm_to_float(x), channels, last=False), channels)

    def flush(self) -> None:
        """Push the resampler's held-back tail; call once at the end of a stream."""
        if self._resampler is not None and self._ring is not None:
            channels = self._ring.shape[1]
            tail = self._resample_chunk(np.zeros((0, channels), np.float32), channels, last=True)
            self._write_resampled(tail, channels)

    def window(self) -> np.ndarray | None:
        """Normalised float32 ``[1, num_mel_bins, target_length]`` of the latest clip, or None."""
        if self._ring is None or self._total < self._capacity:
            return None
        if self._cached is not None and self._cached[0] == self._total:
            return self._cached[1].copy()
        clip = np.concatenate([self._ring[self._write :], self._ring[: self._write]]).astype(np.float64)
        out = _melspec_of_centred(clip[:, 0] - clip.mean(), self.config)
        self._cached = (self._total, out)
        return out.copy()

    def _resample_chunk(self, x: np.ndarray, channels: int, *, last: bool) -> np.ndarray:
        if self.input_rate == self.config.sample_rate:
            return x
        if self._resampler is None:
            soxr = require("soxr", purpose="audio resampling")
            self._resampler = soxr.ResampleStream(
                self.input_rate, self.config.sample_rate, channels, dtype="float32", quality=_RESAMPLE_QUALITY
            )
        chunk = np.ascontiguousarray(x if channels > 1 else x[:, 0], dtype=np.float32)
        out = self._resampler.resample_chunk(chunk, last=last)  # type: ignore[attr-defined]
        return np.asarray(out, dtype=np.float32).reshape(-1, channels)

    def _write_resampled(self, y: np.ndarray, channels: int) -> None:
        if self._ring is None:
            self._ring = np.zeros((self._capacity, channels), dtype=np.float32)
        if y.shape[0] >= self._capacity:
            self._ring[:] = y[-self._capacity :]
            self._write = 0
            self._total += y.shape[0]
            return
        first = min(y.shape[0], self._capacity - self._write)
        self._ring[self._write : self._write + first] = y[:first]
        self._ring[: y.shape[0] - first] = y[first:]
        self._write = (self._write + y.shape[0]) % self._capacity
        self._total += y.shape[0]
