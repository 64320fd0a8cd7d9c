"""Decoded video frames to the vision tower's video input: float32 [15, 3, 2, 224, 224] per file.

Reference loader (research notes 1.2), re-implemented from its description:

1. Clips: 5 windows of 2 s starting at ``i * max(D - 2, 0) / 4`` (:func:`clip_windows`). Here the
   duration D of a file is ``num_frames / fps`` and a window [start, end) holds the frames whose
   timestamps ``k / fps`` fall inside it (:func:`clip_frame_indices`).
2. Frames: 2 per clip, the first and last frame of the window (``linspace`` indices, truncated).
3. /255, short side to 224 with bilinear interpolation, ``align_corners=False``, **no antialiasing**
   (pytorchvideo ``ShortSideScale``: long side ``floor(long / short * 224)``), CLIP normalisation.
4. Three 224 crops per clip: left/centre/right for landscape (and square), top/centre/bottom for
   portrait; the centre offset is ``ceil(margin / 2)``.

Output order is clip-major: ``[clip0-crop0, clip0-crop1, clip0-crop2, clip1-crop0, ...]``. The model
averages the 15 embeddings, so the order does not change the result. Input rules (uint8 RGB, gray,
RGBA, float in [0, 1]) are those of :mod:`edgebind.preprocess.image`. Decoding files is not done here.

For a live camera, :class:`StreamingClip` builds one [3, 2, 224, 224] clip (centre crop) at a time.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError, PreprocessError, StreamError
from ._checks import positive
from ._resize import (
    check_resize_config,
    resize_bilinear,
    resize_size_short_side_scale,
    uniform_crop_offsets,
)
from .image import CLIP_MEAN, CLIP_STD, as_rgb, check_mean_std, normalize_chw

logger = logging.getLogger(__name__)

# Frame timestamps k / fps are compared with window bounds in float; this absorbs the rounding of
# e.g. 2.0 * 30 so that frame 60 is not pushed out of the window that starts at 2.0 s.
_TIME_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VideoConfig(ConfigMixin):
    """Video preprocessing parameters (recorded in the bundle manifest)."""

    size: int = 224
    crop_size: int = 224
    clip_duration: float = 2.0
    clips: int = 5
    frames_per_clip: int = 2
    num_crops: int = 3
    """3 (left/centre/right, the reference) or 1 (centre only)."""
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __post_init__(self) -> None:
        check_resize_config(self.size, self.crop_size, "VideoConfig")
        check_mean_std(self.mean, self.std, 3, "VideoConfig")
        if not (isinstance(self.clip_duration, (int, float)) and self.clip_duration > 0):
            raise ConfigError(
                f"VideoConfig.clip_duration: expected a positive number of seconds, got {self.clip_duration!r}"
            )
        for field in ("clips", "frames_per_clip"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"VideoConfig.{field}: expected a positive integer, got {value!r}")
        if self.num_crops not in (1, 3):
            raise ConfigError(f"VideoConfig.num_crops: expected 1 or 3, got {self.num_crops!r}")


def clip_windows(duration_s: float, clip_duration: float = 2.0, clips: int = 5) -> list[tuple[float, float]]:
    """(start, end) seconds of the ``clips`` evenly spread windows: start_i = i * max(D - clip, 0) / (clips - 1).

    Videos shorter than one clip give ``clips`` identical windows [0, clip_duration). With
    ``clips == 1`` the single window starts at 0.
    """
    duration_s = positive(duration_s, "duration_s")
    clip_duration = positive(clip_duration, "clip_duration")
    if isinstance(clips, bool) or not isinstance(clips, int) or clips < 1:
        raise PreprocessError(f"clips: expected a positive integer, got {clips!r}")
    latest_start = max(duration_s - clip_duration, 0.0)
    starts = [0.0] if clips == 1 else [i * latest_start / (clips - 1) for i in range(clips)]
    return [(s, s + clip_duration) for s in starts]


def clip_frame_indices(num_frames: int, fps: float, config: VideoConfig | None = None) -> np.ndarray:
    """Frame indices, int64 [clips, frames_per_clip], sampled from each window of :func:`clip_windows`.

    A window [start, end) holds frames k with ``start <= k / fps < end`` (clamped to the video);
    ``frames_per_clip`` indices are spread over them with ``linspace`` and truncated, which for 2
    frames picks the first and the last frame of the window.
    """
    config = config or VideoConfig()
    fps = positive(fps, "fps")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise PreprocessError(f"num_frames: expected a positive integer, got {num_frames!r}")
    windows = clip_windows(num_frames / fps, config.clip_duration, config.clips)
    out = np.empty((len(windows), config.frames_per_clip), dtype=np.int64)
    for i, (start, end) in enumerate(windows):
        first = min(max(math.ceil(start * fps - _TIME_EPS), 0), num_frames - 1)
        last = min(max(math.ceil(end * fps - _TIME_EPS) - 1, first), num_frames - 1)
        out[i] = np.linspace(first, last, config.frames_per_clip).astype(np.int64)
    return out


def crop_offsets(height: int, width: int, crop: int, num_crops: int) -> list[tuple[int, int]]:
    """(top, left) of each spatial crop: centre only, or left/centre/right (top/centre/bottom if portrait)."""
    if num_crops == 1:
        return [uniform_crop_offsets(height, width, crop, 1)]
    return [uniform_crop_offsets(height, width, crop, i) for i in range(3)]


def _scale_normalize(frame_hwc: np.ndarray, config: VideoConfig) -> np.ndarray:
    """One RGB frame (uint8 or float in [0, 1]) -> /255, short-side bilinear resize, normalise: [3, h, w]."""
    chw = frame_hwc.transpose(2, 0, 1).astype(np.float32)
    if frame_hwc.dtype == np.uint8:
        chw /= np.float32(255.0)
    new_h, new_w = resize_size_short_side_scale(chw.shape[1], chw.shape[2], config.size)
    return normalize_chw(resize_bilinear(chw, new_h, new_w), config.mean, config.std)


def preprocess_frames(frames_thwc_uint8: object, fps: float, config: VideoConfig | None = None) -> np.ndarray:
    """Decoded frames of one video (uint8 [T, H, W, 3] RGB) to float32 [clips * crops, 3, frames, crop, crop].

    With the default config that is [15, 3, 2, 224, 224], ready for a batch axis in front
    ([B, 15, 3, 2, 224, 224], the 6-D input the vision tower averages over). ``fps`` is the frame
    rate of ``frames_thwc_uint8``. Only the frames that the clips sample are converted and resized.
    """
    config = config or VideoConfig()
    frames = as_rgb(frames_thwc_uint8, "frames", leading_axes=1)
    indices = clip_frame_indices(frames.shape[0], fps, config)
    processed = {int(k): _scale_normalize(frames[k], config) for k in np.unique(indices)}
    _, height, width = next(iter(processed.values())).shape
    offsets = crop_offsets(height, width, config.crop_size, config.num_crops)
    c = config.crop_size
    out = np.empty((len(indices) * len(offsets), 3, config.frames_per_clip, c, c), dtype=np.float32)
    for i, clip in enumerate(indices):
        stacked = np.stack([processed[int(k)] for k in clip], axis=1)  # [3, T, h, w]
        for j, (top, left) in enumerate(offsets):
            out[i * len(offsets) + j] = stacked[:, :, top : top + c, left : left + c]
    return out


def preprocess_frame(frame_hwc: object, config: VideoConfig | None = None) -> np.ndarray:
    """One video frame to float32 [3, crop, crop] with the video pipeline's resize and centre crop."""
    config = config or VideoConfig()
    processed = _scale_normalize(as_rgb(frame_hwc, "frame"), config)
    top, left = uniform_crop_offsets(processed.shape[1], processed.shape[2], config.crop_size, 1)
    c = config.crop_size
    return np.ascontiguousarray(processed[:, top : top + c, left : left + c])


class StreamingClip:
    """Live-camera clip builder: push frames as they arrive, read a [3, 2, crop, crop] clip (centre crop).

    Each frame is preprocessed on ``push`` (about 0.6 MB per kept frame at 224), so ``clip()`` is a
    cheap stack. Two pairing rules:

    - ``span_s=None`` (default): the clip is the last two frames pushed. Lowest memory and latency;
      at camera rates the two frames are nearly identical, i.e. close to a still image.
    - ``span_s=2.0``: the clip pairs the newest frame with the oldest frame newer than
      ``t_newest - span_s``, like the first and last frame of the reference's 2-s window. Needs
      timestamps and keeps ``span_s * fps`` preprocessed frames.

    With a single frame pushed, the clip repeats it (as the model does for still images).
    """

    def __init__(self, config: VideoConfig | None = None, span_s: float | None = None):
        self.config = config or VideoConfig()
        if span_s is not None:
            span_s = positive(span_s, "span_s")
        self.span_s = span_s
        self._frames: collections.deque[tuple[float | None, np.ndarray]] = collections.deque(
            maxlen=2 if span_s is None else None
        )

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def ready(self) -> bool:
        """True once two frames are held (a clip can be read from one frame too, by repetition)."""
        return len(self._frames) >= 2

    def reset(self) -> None:
        """Forget all frames (after a camera restart or a timestamp jump)."""
        self._frames.clear()

    def push(self, frame_hwc: object, t_s: float | None = None) -> None:
        """Add a frame (same input rules as :func:`preprocess_frames`) captured at ``t_s`` seconds."""
        if self.span_s is not None:
            if t_s is None:
                raise PreprocessError("t_s: StreamingClip(span_s=...) needs the capture time of every frame")
            t_s = float(t_s)
            if not math.isfinite(t_s):
                raise PreprocessError(f"t_s: expected a finite time in seconds, got {t_s!r}")
            if self._frames and t_s <= self._frames[-1][0]:  # type: ignore[operator]
                raise PreprocessError(
                    f"t_s: frame times must increase, got {t_s} after {self._frames[-1][0]}; "
                    "call reset() after a clock jump"
                )
        self._frames.append((t_s, preprocess_frame(frame_hwc, self.config)))
        if self.span_s is not None:
            oldest_allowed = t_s - self.span_s + _TIME_EPS  # type: ignore[operator]
            while len(self._frames) > 1 and self._frames[0][0] < oldest_allowed:  # type: ignore[operator]
                self._frames.popleft()

    def clip(self) -> np.ndarray:
        """float32 [3, 2, crop, crop]: (oldest kept frame, newest frame); raises StreamError before any frame."""
        if not self._frames:
            raise StreamError("StreamingClip.clip(): no frame has been pushed yet")
        return np.stack([self._frames[0][1], self._frames[-1][1]], axis=1)
