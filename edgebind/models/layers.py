"""Transformer building blocks shared by all towers, written for clean ONNX export.

Attention is spelled out as matmul/softmax (no ``nn.MultiheadAttention``, no SDPA) so that the
TorchScript exporter emits plain ops, while the parameter names (``in_proj_weight``,
``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj``) match the official checkpoint keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``[B, L, D]`` with fused in-projection.

    With ``add_bias_kv`` one learned key/value position is appended after the in-projection
    (keys and values get L+1 positions), as in the checkpoint's audio/depth/thermal/IMU towers.
    """

    def __init__(self, dim: int, num_heads: int, *, add_bias_kv: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = nn.Linear(dim, dim)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # [B, L, D] -> [B, H, L, head_dim]; -1 keeps the batch and length dynamic in traced graphs.
        return t.reshape(t.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None and self.bias_v is not None:
            batch = x.shape[0]
            k = torch.cat([k, self.bias_k.expand(batch, -1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, -1, -1)], dim=1)
            if attn_mask is not None:
                # The appended key is visible from every query.
                attn_mask = F.pad(attn_mask, (0, 1))
        q, k, v = self._split_heads(q * self.scale), self._split_heads(k), self._split_heads(v)
        scores = q @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores + attn_mask.to(scores.dtype)
        out = scores.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(x.shape[0], -1, self.num_heads * self.head_dim)
        return self.out_proj(out)


class Mlp(nn.Module):
    """Linear D->hidden, exact (erf) GELU, Linear hidden->D."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x += attn(LN1(x)); x += MLP(LN2(x)).

    Drop-path exists only in training in the reference; inference needs none, so it is omitted
    (it has no parameters, so checkpoint keys are unaffected).
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: int, add_bias_kv: bool, norm_eps: float):
        super().__init__()
        self.attn = SelfAttention(dim, num_heads, add_bias_kv=add_bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.norm_2 = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), attn_mask)
        return x + self.mlp(self.norm_2(x))


class Transformer(nn.Module):
    """A tower trunk: optional pre-transformer LayerNorm (vision only), then the blocks."""

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        num_heads: int,
        *,
        mlp_ratio: int,
        add_bias_kv: bool,
        pre_norm: bool,
        norm_eps: float,
    ):
        super().__init__()
        # A Sequential so the checkpoint key is ``pre_transformer_layer.0.*``.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=norm_eps)) if pre_norm else nn.Sequential()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, add_bias_kv=add_bias_kv, norm_eps=norm_eps)
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre_transformer_layer(x)
        for block in self.blocks:
            x = block(x, attn_mask)
        return x


class SelectToken(nn.Module):
    """Pick one sequence position: ``[B, L, D] -> [B, D]``."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index, ...]


class L2Normalize(nn.Module):
    """Unit-normalise the last dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


class LogitScale(nn.Module):
    """Multiply by ``exp(log_logit_scale)`` clipped at ``max_logit_scale`` (the temperature).

    ``learnable`` makes it a parameter (text); otherwise it is a buffer (audio/depth/thermal/IMU),
    matching where the checkpoint stores it.
    """

    def __init__(self, init_log_scale: float, *, learnable: bool, max_logit_scale: float):
        super().__init__()
        self.init_log_scale = float(init_log_scale)
        self.max_logit_scale = float(max_logit_scale)
        value = torch.empty(())
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def reset(self) -> None:
        """Write the initial value (a no-op on the meta device)."""
        if self.log_logit_scale.device.type != "meta":
            with torch.no_grad():
                self.log_logit_scale.fill_(self.init_log_scale)

    def scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale()
