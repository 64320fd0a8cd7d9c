"""Kaldi-compatible log mel filterbank features in numpy (no torch, no Kaldi).

Written from the published Kaldi feature-extraction formulas; the defaults of ``FbankOptions`` are
the settings ImageBind's audio tower was trained with (torchaudio ``compliance.kaldi.fbank`` with
``num_mel_bins=128, window_type="hanning", dither=0, use_energy=False``). Per frame:

1. cut frames of ``frame_length`` samples every ``frame_shift`` samples (``snip_edges``: only whole
   frames inside the signal; otherwise Kaldi's reflected edges);
2. subtract the frame mean (``remove_dc_offset``);
3. pre-emphasis ``y[i] = x[i] - k * x[i-1]``, the first sample using itself as predecessor;
4. multiply by the window (``hanning`` is the symmetric Hann window ``0.5 - 0.5 cos(2 pi n / (N-1))``);
5. zero-pad to the next power of two and take ``|rfft|^2`` (or ``|rfft|`` without ``use_power``);
6. multiply by triangular filters equally spaced on ``mel(f) = 1127 ln(1 + f/700)`` between
   ``low_freq`` and ``high_freq``, evaluated at the FFT bin frequencies ``k * fs / n_fft`` for
   ``k < n_fft/2`` (the Nyquist bin gets weight 0);
7. ``log(max(energy, float32 eps))``.

Not implemented: dithering (always off, so the output is deterministic), the energy column
(``use_energy=False``; ``htk_compat`` then has no effect), VTLN warping.

Arithmetic is float64, output float32. torchaudio computes in float32, so the two differ by float32
rounding only (about 1e-5 in the log domain, 1e-6 after ImageBind's normalisation); float64 makes
the result independent of whether the installed numpy has a native float32 FFT (numpy < 2 upcasts),
and costs nothing measurable at 200 frames x 512 points.

Unlike Kaldi and kaldi-native-fbank, filters that cover no FFT bin are allowed (they happen at the
low end with 128 bins and a 512-point FFT); their rows are ``log(eps)``, as in torchaudio.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError, PreprocessError
from ._checks import as_array

WindowType = Literal["hanning", "povey", "hamming", "rectangular", "blackman"]

FLOAT32_EPS = float(np.finfo(np.float32).eps)
"""Log floor (1.1920929e-07), the value Kaldi and torchaudio use."""


@dataclasses.dataclass(frozen=True)
class FbankOptions(ConfigMixin):
    """Filterbank settings. Defaults are ImageBind's (torchaudio kaldi fbank, 128 bins, Hann window)."""

    sample_frequency: float = 16000.0
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis_coefficient: float = 0.97
    remove_dc_offset: bool = True
    window_type: WindowType = "hanning"
    blackman_coeff: float = 0.42
    round_to_power_of_two: bool = True
    snip_edges: bool = True
    num_mel_bins: int = 128
    low_freq: float = 20.0
    high_freq: float = 0.0
    """Upper filter edge in Hz; zero or negative means Nyquist plus this value (Kaldi convention)."""
    use_power: bool = True
    use_log_fbank: bool = True

    def __post_init__(self) -> None:
        if not self.sample_frequency > 0:
            raise ConfigError(f"FbankOptions.sample_frequency: expected > 0 Hz, got {self.sample_frequency}")
        if self.frame_length < 2:
            raise ConfigError(
                f"FbankOptions.frame_length_ms: expected at least 2 samples per frame, got {self.frame_length_ms} ms"
                f" = {self.frame_length} samples at {self.sample_frequency} Hz"
            )
        if self.frame_shift < 1:
            raise ConfigError(f"FbankOptions.frame_shift_ms: expected at least 1 sample, got {self.frame_shift_ms} ms")
        if not 0.0 <= self.preemphasis_coefficient <= 1.0:
            raise ConfigError(
                f"FbankOptions.preemphasis_coefficient: expected a value in [0, 1], got {self.preemphasis_coefficient}"
            )
        if self.window_type not in ("hanning", "povey", "hamming", "rectangular", "blackman"):
            raise ConfigError(
                "FbankOptions.window_type: expected one of hanning, povey, hamming, rectangular, blackman,"
                f" got {self.window_type!r}"
            )
        if isinstance(self.num_mel_bins, bool) or not isinstance(self.num_mel_bins, int) or self.num_mel_bins < 1:
            raise ConfigError(f"FbankOptions.num_mel_bins: expected a positive integer, got {self.num_mel_bins!r}")
        nyquist = 0.5 * self.sample_frequency
        if not 0.0 <= self.low_freq < self.upper_freq <= nyquist:
            raise ConfigError(
                f"FbankOptions.low_freq/high_freq: expected 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz),"
                f" got low_freq={self.low_freq}, high_freq={self.high_freq} (resolved to {self.upper_freq})"
            )

    @property
    def frame_length(self) -> int:
        """Samples per frame (400 at 16 kHz / 25 ms)."""
        return int(self.sample_frequency * self.frame_length_ms * 0.001)

    @property
    def frame_shift(self) -> int:
        """Samples between frame starts (160 at 16 kHz / 10 ms)."""
        return int(self.sample_frequency * self.frame_shift_ms * 0.001)

    @property
    def n_fft(self) -> int:
        """FFT size: the frame length, or the next power of two (512) when ``round_to_power_of_two``."""
        n = self.frame_length
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n

    @property
    def upper_freq(self) -> float:
        """``high_freq`` resolved: values <= 0 are offsets from Nyquist."""
        return self.high_freq if self.high_freq > 0 else 0.5 * self.sample_frequency + self.high_freq

    def num_frames(self, num_samples: int) -> int:
        """Number of frames ``fbank`` returns for a signal of ``num_samples`` samples."""
        if self.snip_edges:
            return 0 if num_samples < self.frame_length else 1 + (num_samples - self.frame_length) // self.frame_shift
        return (num_samples + self.frame_shift // 2) // self.frame_shift


def mel_scale(freq_hz: np.ndarray | float) -> np.ndarray | float:
    """Kaldi's mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def window_function(options: FbankOptions) -> np.ndarray:
    """The analysis window, float64 of length ``options.frame_length`` (read-only, cached)."""
    n = options.frame_length
    a = 2.0 * math.pi / (n - 1)
    i = np.arange(n, dtype=np.float64)
    if options.window_type == "hanning":
        w = 0.5 - 0.5 * np.cos(a * i)
    elif options.window_type == "povey":
        w = (0.5 - 0.5 * np.cos(a * i)) ** 0.85
    elif options.window_type == "hamming":
        w = 0.54 - 0.46 * np.cos(a * i)
    elif options.window_type == "blackman":
        b = options.blackman_coeff
        w = b - 0.5 * np.cos(a * i) + (0.5 - b) * np.cos(2.0 * a * i)
    else:  # rectangular
        w = np.ones(n)
    w.setflags(write=False)
    return w


@functools.lru_cache(maxsize=16)
def mel_filterbank(options: FbankOptions) -> np.ndarray:
    """Triangular mel weights, float64 ``[n_fft // 2 + 1, num_mel_bins]`` (read-only, cached).

    Row ``k`` is FFT bin ``k`` at ``k * fs / n_fft`` Hz; the last (Nyquist) row is zero, as in Kaldi,
    which only uses the first ``n_fft / 2`` bins. A filter whose open mel interval contains no bin
    centre is an all-zero column.
    """
    n_bins = options.num_mel_bins
    half = options.n_fft // 2
    mel_low = float(mel_scale(options.low_freq))
    mel_high = float(mel_scale(options.upper_freq))
    delta = (mel_high - mel_low) / (n_bins + 1)
    b = np.arange(n_bins, dtype=np.float64)[None, :]
    left, centre, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    bin_mel = mel_scale(np.arange(half, dtype=np.float64) * options.sample_frequency / options.n_fft)[:, None]
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    weights = np.where((bin_mel > left) & (bin_mel < right), np.where(bin_mel <= centre, rising, falling), 0.0)
    weights = np.vstack([weights, np.zeros((1, n_bins))])
    weights.setflags(write=False)
    return weights


def _frame_signal(x: np.ndarray, options: FbankOptions) -> np.ndarray:
    """``[num_frames, frame_length]`` frames of a 1-D float64 signal (a view when ``snip_edges``)."""
    length, shift = options.frame_length, options.frame_shift
    if options.snip_edges:
        return np.lib.stride_tricks.sliding_window_view(x, length)[::shift]
    # Kaldi's snip_edges=false: frame m is centred on m*shift + shift/2, with samples outside the
    # signal reflected about its ends (index -1 -> 0, N -> N-1).
    n = x.shape[0]
    starts = np.arange(options.num_frames(n)) * shift + shift // 2 - length // 2
    idx = starts[:, None] + np.arange(length)[None, :]
    idx = np.where(idx < 0, -idx - 1, idx)
    idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise PreprocessError(
            f"fbank waveform: {n} samples is too short to reflect a {length}-sample frame (snip_edges=False)"
        )
    return x[idx]


def fbank(waveform: np.ndarray, options: FbankOptions | None = None) -> np.ndarray:
    """Log mel filterbank of a mono waveform: float32 ``[num_frames, num_mel_bins]``.

    ``waveform`` is 1-D at ``options.sample_frequency``, in whatever amplitude scale the caller
    uses (ImageBind uses floats in [-1, 1]; Kaldi tools usually use the int16 range, which adds
    ``2 ln 32768`` to every log value that is above the floor). With ``snip_edges`` there are
    ``1 + (N - frame_length) // frame_shift`` frames; a signal shorter than one frame raises
    ``PreprocessError`` (pad it first).
    """
    options = options or FbankOptions()
    x = as_array(waveform, "fbank waveform", ndim=1, kinds="uif").astype(np.float64, copy=False)
    num_frames = options.num_frames(x.shape[0])
    if num_frames < 1:
        raise PreprocessError(
            f"fbank waveform: expected at least one {options.frame_length}-sample frame"
            f" ({options.frame_length_ms} ms at {options.sample_frequency} Hz), got {x.shape[0]} samples"
        )
    frames = _frame_signal(x, options)
    if options.remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    if options.preemphasis_coefficient != 0.0:
        previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        frames = frames - options.preemphasis_coefficient * previous
    frames = frames * window_function(options)
    spectrum = np.abs(np.fft.rfft(frames, n=options.n_fft, axis=1))
    if options.use_power:
        spectrum = spectrum * spectrum
    energies = spectrum @ mel_filterbank(options)
    if options.use_log_fbank:
        energies = np.log(np.maximum(energies, FLOAT32_EPS))
    return energies.astype(np.float32)
