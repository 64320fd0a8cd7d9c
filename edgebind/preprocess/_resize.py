"""Resize and crop helpers shared by the image, video, depth and thermal preprocessing.

Two resize families are needed because the reference pipelines use two libraries:

- stills (image, depth, thermal) follow torchvision's ``Resize(size)`` on a PIL image: Pillow's
  antialiased filters, output size from :func:`resize_size_torchvision`, then ``CenterCrop``
  (offsets from :func:`center_crop_offsets`, which rounds like torchvision);
- video follows pytorchvideo's ``ShortSideScale``: ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)`` without antialiasing, re-implemented here in numpy as a separable
  interpolation (:func:`bilinear_matrix` is the dense form, :func:`resize_bilinear` applies the same
  two-taps-per-row matrix by gathering), with the size from :func:`resize_size_short_side_scale`.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image

from ..errors import ConfigError, PreprocessError

Resample = Literal["bicubic", "bilinear"]

_PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resize_size_torchvision(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of torchvision ``Resize(size)``: short side = ``size``.

    The long side is ``int(size * long / short)`` (truncated, computed in that order), which is
    what torchvision does; a different rounding would shift the centre crop by a pixel.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize_size_short_side_scale(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of pytorchvideo ``ShortSideScale(size)``: ``floor(long / short * size)``."""
    if width < height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def center_crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision ``CenterCrop(crop)``: ``int(round((dim - crop) / 2))``.

    Python's ``round`` rounds halves to even, exactly as torchvision's code does, so odd margins
    land where the reference puts them.
    """
    if crop > height or crop > width:
        raise PreprocessError(f"crop {crop} is larger than the resized image {height}x{width}")
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def pil_resize(
    array: np.ndarray, height: int, width: int, resample: Resample = "bicubic", *, clip_unit: bool = False
) -> np.ndarray:
    """Resize a uint8 HxW / HxWx3 or float32 HxW array with Pillow (antialiased), returning the same dtype.

    uint8 input goes through Pillow's fixed-point 8-bit path ("L"/"RGB"), bit-identical to resizing a
    PIL image; float32 input uses mode "F" (no quantisation). With ``clip_unit`` a float image in
    [0, 1] is resized like the 8-bit path: horizontal pass, clip to [0, 1], vertical pass, clip,
    because Pillow's 8-bit path clips the filter's overshoot after each pass (a single float pass
    clipped only at the end differs from it by up to ~4 grey levels at hard edges, two passes by ~1).
    """
    if array.dtype == np.float32 and array.ndim == 2:
        image = Image.fromarray(np.ascontiguousarray(array))
    elif array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        image = Image.fromarray(np.ascontiguousarray(array))
    else:  # internal misuse, not user input
        raise TypeError(f"pil_resize supports uint8 HxW/HxWx3 or float32 HxW, got {array.dtype} {array.shape}")
    if image.size == (width, height):
        return np.array(image)
    pil_filter = _PIL_FILTERS[resample]
    if not (clip_unit and image.mode == "F"):
        return np.asarray(image.resize((width, height), pil_filter))
    if image.width != width:
        horizontal = np.clip(np.asarray(image.resize((width, image.height), pil_filter)), 0.0, 1.0)
        image = Image.fromarray(np.ascontiguousarray(horizontal, dtype=np.float32))
    if image.height != height:
        image = image.resize((width, height), pil_filter)
    return np.clip(np.asarray(image), 0.0, 1.0).astype(np.float32, copy=False)


def resize_short_side_center_crop(
    array: np.ndarray, size: int, crop: int, resample: Resample = "bicubic", *, clip_unit: bool = False
) -> np.ndarray:
    """torchvision ``Resize(size)`` + ``CenterCrop(crop)`` on a uint8 HxW[x3] or float32 HxW array.

    ``clip_unit``: see :func:`pil_resize` (float images in [0, 1] that should behave like 8-bit ones).
    """
    new_h, new_w = resize_size_torchvision(array.shape[0], array.shape[1], size)
    resized = pil_resize(array, new_h, new_w, resample, clip_unit=clip_unit)
    top, left = center_crop_offsets(new_h, new_w, crop)
    return resized[top : top + crop, left : left + crop]


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and float32 weight of i1 for 1-D linear resampling, align_corners=False.

    Source coordinate of output pixel j is ``(j + 0.5) * in/out - 0.5``, clamped at 0 (torch clamps
    negative coordinates for linear modes); the right neighbour is clamped to the last pixel. The
    scale is a float32 quotient and the coordinate is rounded to float32, as in torch's CPU kernel:
    exact float64 coordinates differ from torch by up to 1e-4 on 1080p frames, these by ~2e-7.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0.astype(np.float32)
    return i0, i1, w1


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Dense [out_size, in_size] float64 matrix M with ``resized = M @ signal`` (two taps per row)."""
    i0, i1, w1 = bilinear_taps(in_size, out_size)
    w1 = w1.astype(np.float64)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), 1.0 - w1)
    np.add.at(matrix, (rows, i1), w1)
    return matrix


def resize_bilinear(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize the last two axes of a float array to (height, width): bilinear, align_corners=False, no antialias.

    Equivalent to ``Mh @ x @ Mw.T`` with :func:`bilinear_matrix`, but gathers the two taps per row
    instead of multiplying by mostly-zero matrices (O(out) instead of O(out * in) per line).
    """
    x = np.asarray(array, dtype=np.float32)
    i0, i1, w1 = bilinear_taps(x.shape[-2], height)
    w = w1[:, None]
    x = x[..., i0, :] * (1.0 - w) + x[..., i1, :] * w
    i0, i1, w = bilinear_taps(x.shape[-1], width)
    return x[..., i0] * (1.0 - w) + x[..., i1] * w


def uniform_crop_offsets(height: int, width: int, crop: int, index: int) -> tuple[int, int]:
    """(top, left) of crop ``index`` (0, 1, 2) along the long side, as in the 3-crop video test protocol.

    Index 1 is the centre (``ceil((dim - crop) / 2)``, the video convention, which differs from
    :func:`center_crop_offsets` by one pixel on odd margins); 0 is the left/top edge, 2 the
    right/bottom edge. Landscape and square frames move along the width, portrait along the height.
    """
    if crop > height or crop > width:
        raise PreprocessError(f"crop {crop} is larger than the resized frame {height}x{width}")
    top = int(math.ceil((height - crop) / 2))
    left = int(math.ceil((width - crop) / 2))
    if index not in (0, 1, 2):
        raise ValueError(f"crop index must be 0, 1 or 2, got {index}")
    if height > width:
        top = {0: 0, 1: top, 2: height - crop}[index]
    else:
        left = {0: 0, 1: left, 2: width - crop}[index]
    return top, left


def check_resize_config(size: int, crop_size: int, where: str) -> None:
    """Raise ConfigError unless 0 < crop_size <= size (a crop larger than the resize would need padding)."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"{where}.size: expected a positive integer, got {size!r}")
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or not 0 < crop_size <= size:
        raise ConfigError(f"{where}.crop_size: expected an integer in [1, size={size}], got {crop_size!r}")
