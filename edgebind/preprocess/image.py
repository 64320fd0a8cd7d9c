"""Still images to the vision tower's input: float32 [3, 224, 224].

Reference pipeline (ImageBind's image loader, see research notes 1.1): PIL RGB image, torchvision
``Resize(224, BICUBIC)`` (short side to 224, Pillow's antialiased bicubic), ``CenterCrop(224)``,
``ToTensor`` (/255), ``Normalize`` with the OpenAI CLIP mean/std. For uint8 RGB input this module
calls the same Pillow resize with the same output size and crop offsets, so it matches the reference
to float32 rounding of the final normalisation (bit-identical in practice).

Accepted inputs (rules shared with :mod:`edgebind.preprocess.video`):

- uint8 HxWx3 RGB (the reference case). Convert BGR camera frames (OpenCV, ``bgr8``) to RGB first.
- uint8 HxW or HxWx1 grayscale: replicated to three channels, as PIL ``convert("RGB")`` does.
- uint8 HxWx4 RGBA: the alpha channel is dropped (no compositing), as PIL ``convert("RGB")`` does.
- float HxW[x1|x3|x4] with values in [0, 1] (e.g. ``uint8 / 255``): resized per channel in float
  (Pillow mode "F", same bicubic filter, no 8-bit rounding; the filter's overshoot is clipped to [0, 1]
  after each pass as in Pillow's 8-bit path). For ``uint8 / 255`` input the result differs from the
  uint8 path by about one grey level at most (the reference's own 8-bit rounding).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError, PreprocessError
from ._checks import as_array
from ._resize import Resample, check_resize_config, resize_short_side_center_crop

logger = logging.getLogger(__name__)

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImageConfig(ConfigMixin):
    """Image preprocessing parameters (recorded in the bundle manifest)."""

    size: int = 224
    """Short side after resizing (torchvision ``Resize(size)`` rule)."""
    crop_size: int = 224
    """Side of the centre crop fed to the model."""
    resample: Resample = "bicubic"
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __post_init__(self) -> None:
        check_resize_config(self.size, self.crop_size, "ImageConfig")
        check_mean_std(self.mean, self.std, 3, "ImageConfig")


def check_mean_std(mean: Sequence[float], std: Sequence[float], channels: int, where: str) -> None:
    """Raise ConfigError unless mean/std have ``channels`` entries and std is strictly positive."""
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"{where}.mean/std: expected {channels} values each, got {len(mean)} and {len(std)}")
    if not all(np.isfinite(m) for m in mean) or not all(np.isfinite(s) and s > 0 for s in std):
        raise ConfigError(f"{where}.mean/std: expected finite means and positive stds, got {mean} / {std}")


def as_rgb(x: object, name: str, *, leading_axes: int = 0) -> np.ndarray:
    """Validate an image (or a stack with ``leading_axes`` extra leading axes) and return [..., H, W, 3].

    uint8 is returned as uint8; float input must lie in [0, 1] and is returned as float32. Gray and
    RGBA are converted by the rules in the module docstring.
    """
    gray_ndim = leading_axes + 2
    arr = as_array(x, name, ndim=(gray_ndim, gray_ndim + 1), kinds="uf")
    if arr.dtype.kind == "u" and arr.dtype != np.uint8:
        raise PreprocessError(
            f"{name}: expected uint8 (0-255) or float in [0, 1], got {arr.dtype}; scale 16-bit images to 8 bits first"
        )
    if arr.dtype.kind == "f":
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise PreprocessError(f"{name}: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == gray_ndim:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if channels == 1:
        return np.repeat(arr, 3, axis=-1)
    if channels == 3:
        return arr
    if channels == 4:
        return arr[..., :3]
    raise PreprocessError(
        f"{name}: expected H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA) per image, got shape {arr.shape}"
    )


def normalize_chw(chw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std per channel on a [C, ...] float32 array, in float32 like torchvision's Normalize."""
    shape = (-1,) + (1,) * (chw.ndim - 1)
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    return (chw - m) / s


def preprocess(rgb_uint8_hwc: object, config: ImageConfig | None = None) -> np.ndarray:
    """Turn one image into the vision tower's input, float32 [3, crop_size, crop_size].

    ``rgb_uint8_hwc`` is uint8 H x W x 3 RGB (also gray H x W, RGBA H x W x 4, or float in [0, 1];
    see the module docstring). Raises PreprocessError for other shapes, dtypes, NaN/inf or empty input.
    """
    config = config or ImageConfig()
    rgb = as_rgb(rgb_uint8_hwc, "image")
    size, crop = config.size, config.crop_size
    if rgb.dtype == np.uint8:
        if np.ndim(rgb_uint8_hwc) == 2 or np.shape(rgb_uint8_hwc)[-1] == 1:
            # Gray: resize once; replicating before or after resizing gives identical bytes.
            gray = resize_short_side_center_crop(rgb[..., 0], size, crop, config.resample)
            cropped = np.repeat(gray[..., None], 3, axis=-1)
        else:
            cropped = resize_short_side_center_crop(np.ascontiguousarray(rgb), size, crop, config.resample)
        chw = cropped.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    else:
        chw = np.stack(
            [
                resize_short_side_center_crop(rgb[..., c], size, crop, config.resample, clip_unit=True)
                for c in range(3)
            ]
        )
    return np.ascontiguousarray(normalize_chw(chw, config.mean, config.std), dtype=np.float32)


def preprocess_batch(images: Sequence[object], config: ImageConfig | None = None) -> np.ndarray:
    """Preprocess a list of images (any sizes) into float32 [N, 3, crop_size, crop_size]."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)) or len(images) == 0:
        raise PreprocessError("images: expected a non-empty list of images (or an N x H x W x C array)")
    config = config or ImageConfig()
    out = []
    for i, image in enumerate(images):
        try:
            out.append(preprocess(image, config))
        except PreprocessError as exc:
            raise PreprocessError(f"images[{i}]: {exc}") from None
    return np.stack(out)
