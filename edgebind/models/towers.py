"""Per-modality stems, heads and the standalone ``EmbeddingTower`` that the ONNX exporter traces.

Attribute names (``rgbt_stem``, ``depth_stem``, ``imu_stem``, ``pos_embedding_helper``, head
indices) reproduce the official checkpoint layout; see the research notes, section 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..modality import Modality
from .config import ImageBindConfig
from .layers import L2Normalize, LogitScale, SelectToken, Transformer

# Towers whose blocks append a learned key/value position (the official ``add_bias_kv``).
_BIAS_KV_MODALITIES = frozenset({Modality.AUDIO, Modality.DEPTH, Modality.THERMAL, Modality.IMU})
# Stem attribute names as stored in the checkpoint (audio and thermal reuse the RGB-T stem name).
_STEM_NAMES = {Modality.AUDIO: "rgbt_stem", Modality.THERMAL: "rgbt_stem", Modality.DEPTH: "depth_stem"}


class PositionalEmbedding(nn.Module):
    """Holds a learned ``pos_embed`` of shape ``[1, tokens, dim]`` (key ``pos_embedding_helper.pos_embed``)."""

    def __init__(self, num_tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_embed


class RepeatFrames(nn.Module):
    """Turn a still image ``[B, C, H, W]`` into a clip ``[B, C, T, H, W]`` of T identical frames.

    This is the reference image path (index 0 of the vision stem, which is why the Conv3d key is
    ``proj.1``). ``VisionPreprocessor`` avoids it for images by folding the time axis into a Conv2d.
    """

    def __init__(self, num_frames: int):
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(2).expand(-1, -1, self.num_frames, -1, -1)
        return x


def _prepend_cls(cls_token: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class VisionStem(nn.Module):
    """``proj`` = [RepeatFrames, Conv3d k=s=(T, p, p), no bias]; no norm layer."""

    def __init__(self, dim: int, patch: int, num_frames: int):
        super().__init__()
        conv = nn.Conv3d(3, dim, kernel_size=(num_frames, patch, patch), stride=(num_frames, patch, patch), bias=False)
        self.proj = nn.Sequential(RepeatFrames(num_frames), conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv3d = self.proj[1]
        if x.dim() == 4:
            # Identical frames: the Conv3d equals a Conv2d whose kernel is summed over time.
            # This keeps Tile and 3-D convolution out of exported image graphs.
            out = F.conv2d(x, conv.weight.sum(dim=2), stride=conv.stride[1:])
        else:
            out = conv(x)
        return out.flatten(2).transpose(1, 2)


class VisionPreprocessor(nn.Module):
    def __init__(self, config: ImageBindConfig):
        super().__init__()
        dim = config.vision_embed_dim
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.rgbt_stem = VisionStem(dim, config.vision_patch_size, config.vision_num_frames)
        self.pos_embedding_helper = PositionalEmbedding(config.num_tokens(Modality.VISION), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_embedding_helper(_prepend_cls(self.cls_token, self.rgbt_stem(x)))


class TextPreprocessor(nn.Module):
    """Token embedding plus learned positions; also owns the causal mask buffer the trunk uses."""

    def __init__(self, config: ImageBindConfig):
        super().__init__()
        dim, length = config.text_embed_dim, config.text_context_length
        self.pos_embed = nn.Parameter(torch.empty(1, length, dim))
        self.register_buffer("mask", torch.empty(length, length))
        self.token_embedding = nn.Embedding(config.text_vocab_size, dim)

    def reset_mask(self) -> None:
        """Write the additive causal mask (-inf strictly above the diagonal); no-op on meta."""
        if self.mask.device.type != "meta":
            with torch.no_grad():
                self.mask.copy_(torch.full_like(self.mask, float("-inf")).triu(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Indexing the table (rather than calling the Embedding) still exports to one Gather, but
        # the dynamo exporter then does not name a graph value "embedding", which would clash
        # with an output of that name.
        return self.token_embedding.weight[tokens] + self.pos_embed


class PatchStem(nn.Module):
    """Conv2d patchify (no bias) -> tokens ``[B, N, D]`` -> LayerNorm (audio, depth, thermal)."""

    def __init__(self, dim: int, kernel: int, stride: int, norm_eps: float):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=kernel, stride=stride, bias=False)
        self.norm_layer = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flatten(2) orders patches row-major: mel-major then time for audio spectrograms.
        return self.norm_layer(self.proj(x).flatten(2).transpose(1, 2))


class PatchPreprocessor(nn.Module):
    """Single-channel 2-D input (audio spectrogram, depth, thermal): stem, CLS, positions."""

    def __init__(self, modality: Modality, config: ImageBindConfig):
        super().__init__()
        dim = config.embed_dim(modality)
        if modality is Modality.AUDIO:
            kernel, stride = config.audio_kernel_size, config.audio_stride
        else:
            kernel = stride = config.depth_patch_size if modality is Modality.DEPTH else config.thermal_patch_size
        self.stem_name = _STEM_NAMES[modality]
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.add_module(self.stem_name, PatchStem(dim, kernel, stride, config.stem_norm_eps))
        self.pos_embedding_helper = PositionalEmbedding(config.num_tokens(modality), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = getattr(self, self.stem_name)
        return self.pos_embedding_helper(_prepend_cls(self.cls_token, stem(x)))


class ImuStem(nn.Module):
    """Linear (no bias) over flattened 6x8 windows, then LayerNorm."""

    def __init__(self, in_features: int, dim: int, norm_eps: float):
        super().__init__()
        self.proj = nn.Linear(in_features, dim, bias=False)
        self.norm_layer = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_layer(self.proj(x))


class ImuPreprocessor(nn.Module):
    """``[B, C, T]`` -> non-overlapping windows of K samples, each flattened channel-major."""

    def __init__(self, config: ImageBindConfig):
        super().__init__()
        dim = config.imu_embed_dim
        self.channels, self.kernel = config.imu_num_channels, config.imu_kernel_size
        self.num_patches = config.imu_length // self.kernel
        self.pos_embed = nn.Parameter(torch.empty(1, self.num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.imu_stem = ImuStem(self.channels * self.kernel, dim, config.stem_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Equivalent to unfold(-1, K, K) because step == size, but exports to plain
        # Reshape/Transpose (the TorchScript exporter mis-handles unfold here).
        patches = x.reshape(-1, self.channels, self.num_patches, self.kernel).permute(0, 2, 1, 3)
        patches = patches.reshape(-1, self.num_patches, self.channels * self.kernel)
        return _prepend_cls(self.cls_token, self.imu_stem(patches)) + self.pos_embed


class TextHead(nn.Module):
    """Gather the end-of-text position, then ``proj`` = [LayerNorm, Linear no bias]."""

    def __init__(self, dim: int, out_dim: int, norm_eps: float):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=norm_eps), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        index = eot_index.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1])
        # [:, 0] rather than squeeze(1): the TorchScript exporter turns a squeeze of a symbolic dim into an If
        # node, which FP16 conversion and TensorRT handle badly.
        return self.proj(torch.gather(x, 1, index)[:, 0])


@dataclass
class TowerParts:
    """The four modules of one tower, in checkpoint order."""

    preprocessor: nn.Module
    trunk: Transformer
    head: nn.Module
    postprocessor: nn.Sequential


def build_tower_parts(modality: Modality, config: ImageBindConfig) -> TowerParts:
    """Construct (uninitialised) modules for one modality with checkpoint-compatible names."""
    dim, out_dim = config.embed_dim(modality), config.out_embed_dim
    if modality is Modality.VISION:
        preprocessor: nn.Module = VisionPreprocessor(config)
    elif modality is Modality.TEXT:
        preprocessor = TextPreprocessor(config)
    elif modality is Modality.IMU:
        preprocessor = ImuPreprocessor(config)
    else:
        preprocessor = PatchPreprocessor(modality, config)
    trunk = Transformer(
        dim,
        config.num_blocks(modality),
        config.num_heads(modality),
        mlp_ratio=config.mlp_ratio,
        add_bias_kv=modality in _BIAS_KV_MODALITIES,
        pre_norm=modality is Modality.VISION,
        norm_eps=config.block_norm_eps,
    )
    norm = nn.LayerNorm(dim, eps=config.block_norm_eps)
    projection = nn.Linear(dim, out_dim, bias=False)
    if modality is Modality.TEXT:
        head: nn.Module = TextHead(dim, out_dim, config.block_norm_eps)
    elif modality is Modality.IMU:
        # The Dropout keeps the projection at index 3, as in the checkpoint; it is inert in eval.
        head = nn.Sequential(norm, SelectToken(0), nn.Dropout(config.imu_head_dropout), projection)
    else:
        head = nn.Sequential(norm, SelectToken(0), projection)
    if modality is Modality.VISION:
        postprocessor = nn.Sequential(L2Normalize())
    elif modality is Modality.TEXT:
        scale = LogitScale(config.text_logit_scale_init, learnable=True, max_logit_scale=config.max_logit_scale)
        postprocessor = nn.Sequential(L2Normalize(), scale)
    else:
        fixed = config.fixed_logit_scale(modality)
        assert fixed is not None
        scale = LogitScale(math.log(fixed), learnable=False, max_logit_scale=config.max_logit_scale)
        postprocessor = nn.Sequential(L2Normalize(), scale)
    return TowerParts(preprocessor, trunk, head, postprocessor)


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _describe(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(["B", *map(str, shape)]) + "]"


class EmbeddingTower(nn.Module):
    """One modality's encoder as a standalone module: ``forward(x)`` -> unit-norm ``[B, out_dim]``.

    Shares its submodules (and so its weights) with the ``ImageBindModel`` it came from. The
    output is L2-normalised and *not* multiplied by the temperature. The forward has no data-
    dependent Python control flow, so ``torch.onnx.export`` can trace it with a dynamic batch.
    """

    def __init__(self, modality: Modality, config: ImageBindConfig, parts: TowerParts, *, video: bool = False):
        super().__init__()
        self.modality = modality
        self.video = video
        self.input_shape = config.input_shape(modality, video=video)
        self.preprocessor = parts.preprocessor
        self.trunk = parts.trunk
        self.head = parts.head

    def check_input(self, x: object) -> torch.Tensor:
        """Validate rank, per-row shape and dtype; cast floats to the weights' dtype."""
        name = self.modality.value + (" video" if self.video else "")
        kind = "int64 token" if self.modality is Modality.TEXT else "float"
        expected = f"{name} input: expected a {kind} tensor of shape {_describe(self.input_shape)}"
        if not isinstance(x, torch.Tensor):
            raise ModelError(f"{expected}, got {type(x).__name__}")
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            hint = ""
            if self.modality is Modality.VISION and x.dim() == 5 and not self.video:
                hint = " (for video clips use tower('vision', video=True))"
            raise ModelError(f"{expected}, got shape {list(x.shape)}{hint}")
        if self.modality is Modality.TEXT:
            if x.dtype not in (torch.int64, torch.int32):
                raise ModelError(f"{expected}, got dtype {x.dtype}")
            return x
        if not x.is_floating_point():
            raise ModelError(f"{expected}, got dtype {x.dtype}")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_tracing():
            x = self.check_input(x)
        if self.modality is Modality.TEXT:
            tokens = x.long()
            # The end-of-text token has the largest id in the vocabulary, so argmax finds it.
            eot_index = tokens.argmax(dim=-1)
            hidden = self.trunk(self.preprocessor(tokens), self.preprocessor.mask)
            pooled = self.head(hidden, eot_index)
        else:
            weight_dtype = self.head[-1].weight.dtype
            # Cast only when needed: a traced no-op Cast(to=float) ends up between an FP16-converted input and
            # the stem Conv and breaks the FP16 model.
            if x.dtype != weight_dtype:
                x = x.to(weight_dtype)
            hidden = self.trunk(self.preprocessor(x))
            pooled = self.head(hidden)
        return F.normalize(pooled, dim=-1)
