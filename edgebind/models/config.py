"""Model geometry: the ``ImageBindConfig`` dataclass and the registry of named configurations.

This module is torch-free so that manifests, exporters and the CLI can read model geometry
(input shapes, token counts, temperatures) without importing torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .._config import ConfigMixin
from ..errors import ModelError
from ..modality import Modality

# Keyword names of the official constructor; ``build()`` accepts exactly these as overrides.
OVERRIDABLE_FIELDS: tuple[str, ...] = (
    "out_embed_dim",
    "vision_embed_dim", "vision_num_blocks", "vision_num_heads",
    "text_embed_dim", "text_num_blocks", "text_num_heads",
    "audio_embed_dim", "audio_num_blocks", "audio_num_heads", "audio_drop_path",
    "depth_embed_dim", "depth_num_blocks", "depth_num_heads", "depth_drop_path",
    "thermal_embed_dim", "thermal_num_blocks", "thermal_num_heads", "thermal_drop_path",
    "imu_embed_dim", "imu_num_blocks", "imu_num_heads", "imu_drop_path",
)  # fmt: skip


@dataclass(frozen=True)
class ImageBindConfig(ConfigMixin):
    """Geometry of an ImageBind model. The defaults are the official ``imagebind_huge`` values.

    The first block of fields mirrors the official constructor keywords; the rest is the fixed
    input geometry and constants that the checkpoint and the reference preprocessing assume.
    """

    out_embed_dim: int = 1024
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_drop_path: float = 0.1
    depth_embed_dim: int = 384
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    depth_drop_path: float = 0.0
    thermal_embed_dim: int = 768
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    thermal_drop_path: float = 0.0
    imu_embed_dim: int = 512
    imu_num_blocks: int = 6
    imu_num_heads: int = 8
    imu_drop_path: float = 0.7

    # Fixed input geometry (shared by every configuration so preprocessing is shared too).
    image_size: int = 224
    vision_patch_size: int = 14
    vision_num_frames: int = 2  # a still image is repeated to this many frames
    text_vocab_size: int = 49408
    text_context_length: int = 77
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    audio_kernel_size: int = 16
    audio_stride: int = 10
    depth_patch_size: int = 16
    thermal_patch_size: int = 16
    imu_num_channels: int = 6
    imu_length: int = 2000
    imu_kernel_size: int = 8
    imu_head_dropout: float = 0.5

    # Block and normalisation constants.
    mlp_ratio: int = 4
    block_norm_eps: float = 1e-6
    stem_norm_eps: float = 1e-5

    # Temperatures: text is learned (this is its initial value), the others are fixed buffers.
    text_logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    audio_logit_scale: float = 20.0
    depth_logit_scale: float = 5.0
    thermal_logit_scale: float = 10.0
    imu_logit_scale: float = 5.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ModelError(f"ImageBindConfig.{f.name}: expected a positive integer, got {value!r}")
            elif f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ModelError(f"ImageBindConfig.{f.name}: expected a finite number, got {value!r}")
        for m in Modality:
            dim, heads = self.embed_dim(m), self.num_heads(m)
            if dim % heads:
                raise ModelError(
                    f"ImageBindConfig.{m.value}_embed_dim: {dim} is not divisible by {m.value}_num_heads={heads}"
                )
            rate = self.drop_path(m)
            if not 0.0 <= rate < 1.0:
                raise ModelError(f"ImageBindConfig.{m.value}_drop_path: expected a value in [0, 1), got {rate!r}")
        for name, size, patch in (
            ("vision_patch_size", self.image_size, self.vision_patch_size),
            ("depth_patch_size", self.image_size, self.depth_patch_size),
            ("thermal_patch_size", self.image_size, self.thermal_patch_size),
            ("imu_kernel_size", self.imu_length, self.imu_kernel_size),
        ):
            if size % patch:
                raise ModelError(f"ImageBindConfig.{name}: {patch} does not divide the input length {size}")
        if self.audio_kernel_size > min(self.audio_num_mel_bins, self.audio_target_len):
            raise ModelError(
                f"ImageBindConfig.audio_kernel_size: {self.audio_kernel_size} is larger than the "
                f"{self.audio_num_mel_bins}x{self.audio_target_len} spectrogram"
            )
        if not 0.0 <= self.imu_head_dropout < 1.0:
            raise ModelError(
                f"ImageBindConfig.imu_head_dropout: expected a value in [0, 1), got {self.imu_head_dropout!r}"
            )

    # Per-modality accessors, so tower code does not spell out f-string field names.
    def embed_dim(self, modality: Modality | str) -> int:
        """Transformer width of one tower."""
        return int(getattr(self, f"{Modality.parse(modality).value}_embed_dim"))

    def num_blocks(self, modality: Modality | str) -> int:
        """Number of transformer blocks of one tower."""
        return int(getattr(self, f"{Modality.parse(modality).value}_num_blocks"))

    def num_heads(self, modality: Modality | str) -> int:
        """Number of attention heads of one tower."""
        return int(getattr(self, f"{Modality.parse(modality).value}_num_heads"))

    def drop_path(self, modality: Modality | str) -> float:
        """Maximum drop-path rate (training only; vision and text have none)."""
        m = Modality.parse(modality)
        return float(getattr(self, f"{m.value}_drop_path", 0.0))

    def input_shape(self, modality: Modality | str, *, video: bool = False) -> tuple[int, ...]:
        """Shape of one input row (without the batch dimension) that a tower takes."""
        m = Modality.parse(modality)
        if video and m is not Modality.VISION:
            raise ModelError(f"video=True applies to the vision tower only, not {m.value!r}")
        if m is Modality.VISION:
            if video:
                return (3, self.vision_num_frames, self.image_size, self.image_size)
            return (3, self.image_size, self.image_size)
        if m is Modality.TEXT:
            return (self.text_context_length,)
        if m is Modality.AUDIO:
            return (1, self.audio_num_mel_bins, self.audio_target_len)
        if m in (Modality.DEPTH, Modality.THERMAL):
            return (1, self.image_size, self.image_size)
        return (self.imu_num_channels, self.imu_length)

    def num_tokens(self, modality: Modality | str) -> int:
        """Sequence length inside a tower's trunk (CLS included where the tower has one)."""
        m = Modality.parse(modality)
        if m is Modality.TEXT:
            return self.text_context_length
        if m is Modality.VISION:
            patches = (self.image_size // self.vision_patch_size) ** 2
        elif m is Modality.AUDIO:
            rows = (self.audio_num_mel_bins - self.audio_kernel_size) // self.audio_stride + 1
            cols = (self.audio_target_len - self.audio_kernel_size) // self.audio_stride + 1
            patches = rows * cols
        elif m is Modality.IMU:
            patches = self.imu_length // self.imu_kernel_size
        else:
            patch = self.depth_patch_size if m is Modality.DEPTH else self.thermal_patch_size
            patches = (self.image_size // patch) ** 2
        return patches + 1

    def fixed_logit_scale(self, modality: Modality | str) -> float | None:
        """The fixed temperature of a tower; None for vision (no scale) and text (learned)."""
        m = Modality.parse(modality)
        if m in (Modality.VISION, Modality.TEXT):
            return None
        return float(getattr(self, f"{m.value}_logit_scale"))


IMAGEBIND_HUGE = ImageBindConfig()

IMAGEBIND_TINY = ImageBindConfig(
    out_embed_dim=64,
    vision_embed_dim=64, vision_num_blocks=2, vision_num_heads=2,
    text_embed_dim=64, text_num_blocks=2, text_num_heads=2,
    audio_embed_dim=48, audio_num_blocks=2, audio_num_heads=2,
    depth_embed_dim=32, depth_num_blocks=2, depth_num_heads=2,
    thermal_embed_dim=48, thermal_num_blocks=2, thermal_num_heads=2,
    imu_embed_dim=32, imu_num_blocks=2, imu_num_heads=2,
)  # fmt: skip
"""A few-MB model with the same code and input geometry as ``imagebind_huge`` (224 px images,
77 tokens over the full 49 408-token vocabulary, 128x204 audio, 6x2000 IMU) but small widths
and 2 blocks per tower. Its weights are seeded random: its embeddings carry no semantics. It
exists for tests and offline demos of the export/runtime pipeline."""

_REGISTRY: dict[str, ImageBindConfig] = {
    "imagebind_huge": IMAGEBIND_HUGE,
    "imagebind_tiny": IMAGEBIND_TINY,
}


def list_models() -> list[str]:
    """Names accepted by ``get_config`` and ``edgebind.models.imagebind.build``."""
    return list(_REGISTRY)


def get_config(name: str) -> ImageBindConfig:
    """The frozen configuration registered under ``name``; ``ModelError`` for an unknown name."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model name {name!r}; expected one of {', '.join(_REGISTRY)}") from None
