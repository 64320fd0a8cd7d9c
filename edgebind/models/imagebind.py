"""``ImageBindModel``: six independent towers in the official checkpoint layout, and ``build()``.

The state dict of ``build("imagebind_huge")`` has exactly the 1311 keys and shapes of the
official ``imagebind_huge.pth``, so that file loads with ``load_state_dict(strict=True)``.
Unlike the reference forward, ``embed`` returns unit-norm embeddings *before* the temperature;
read the temperature with ``logit_scale``.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..modality import ALL_MODALITIES, Modality
from .config import OVERRIDABLE_FIELDS, ImageBindConfig, get_config
from .layers import LogitScale
from .towers import EmbeddingTower, TextPreprocessor, TowerParts, build_tower_parts

logger = logging.getLogger(__name__)

INIT_MODES = ("random", "none")
BUILD_OPTIONS = ("modalities", "device", "seed", "init")
_INIT_STD = 0.02
_INIT_CUTOFF = 2.0  # in standard deviations
_INIT_CHUNK = 1 << 18


class ImageBindModel(nn.Module):
    """ImageBind towers for the selected modalities, keyed like the official checkpoint.

    Args:
        config: model geometry.
        modalities: towers to build (names or ``Modality``); all six when None. Towers not
            built allocate nothing and have no state-dict keys.
        device: where to allocate weights; ``"meta"`` gives a shape-only model.
        seed: random-init seed. Each tensor's stream is derived from the seed and its state-dict
            key, so a tower's initial weights do not depend on which other towers are built.
        init: ``"random"`` (truncated normal std 0.02, zero biases, unit LayerNorms) or
            ``"none"`` (uninitialised memory, for loading a checkpoint right after). Constant
            buffers (causal mask, fixed temperatures) are always written.
    """

    def __init__(
        self,
        config: ImageBindConfig,
        modalities: Iterable[str | Modality] | str | None = None,
        *,
        device: str | torch.device | None = None,
        seed: int = 0,
        init: str = "random",
    ):
        super().__init__()
        if not isinstance(config, ImageBindConfig):
            raise ModelError(f"config: expected an ImageBindConfig, got {type(config).__name__}")
        if init not in INIT_MODES:
            raise ModelError(f"init: expected one of {', '.join(INIT_MODES)}, got {init!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ModelError(f"seed: expected an integer, got {seed!r}")
        selected = _parse_modalities(modalities)
        try:
            target = torch.device(device) if device is not None else torch.device("cpu")
        except (RuntimeError, TypeError) as exc:
            raise ModelError(
                f"device: expected a torch device such as 'cpu', 'cuda:0' or 'meta', got {device!r} ({exc})"
            ) from None

        self.config = config
        self._modalities: tuple[Modality, ...] = tuple(m for m in ALL_MODALITIES if m in selected)
        # Allocate on meta first: this skips torch's default initialisers (slow for 1.2 B
        # parameters and overwritten anyway) and lets "meta" builds cost nothing.
        with torch.device("meta"):
            parts = {m: build_tower_parts(m, config) for m in self._modalities}
        self.modality_preprocessors = nn.ModuleDict({m.value: p.preprocessor for m, p in parts.items()})
        self.modality_trunks = nn.ModuleDict({m.value: p.trunk for m, p in parts.items()})
        self.modality_heads = nn.ModuleDict({m.value: p.head for m, p in parts.items()})
        # Vision has no temperature, hence no postprocessor keys; the empty-key module is harmless.
        self.modality_postprocessors = nn.ModuleDict({m.value: p.postprocessor for m, p in parts.items()})

        if target.type != "meta":
            start = time.perf_counter()
            self.to_empty(device=target)
            self.reset_constants()
            if init == "random":
                self.reset_parameters(seed)
            logger.debug(
                "built towers %s on %s (init=%s) in %.1f s",
                ",".join(m.value for m in self._modalities), target, init, time.perf_counter() - start,
            )
        self.eval()

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """The modalities whose towers this model holds, in canonical order."""
        return self._modalities

    def reset_constants(self) -> None:
        """Write the causal text mask and the initial temperatures (no-op on the meta device)."""
        for module in self.modules():
            if isinstance(module, TextPreprocessor):
                module.reset_mask()
            elif isinstance(module, LogitScale):
                module.reset()

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Deterministic random init in place: truncated normal (std 0.02, cut at 2 std) for
        weights, positions, CLS tokens and bias_k/bias_v; zero biases; LayerNorm weight 1, bias 0."""
        norm_params = {
            id(p): kind
            for module in self.modules()
            if isinstance(module, nn.LayerNorm)
            for kind, p in (("weight", module.weight), ("bias", module.bias))
        }
        for name, param in self.named_parameters():
            if param.device.type == "meta":
                continue
            kind = norm_params.get(id(param))
            if kind == "weight":
                param.fill_(1.0)
            elif kind == "bias" or name.endswith("bias"):
                param.zero_()
            elif name.endswith("log_logit_scale"):
                continue  # written by reset_constants
            else:
                _trunc_normal_(param, _tensor_seed(seed, name))

    def _check_modality(self, modality: str | Modality) -> Modality:
        try:
            m = Modality.parse(modality)
        except ConfigError as exc:
            raise ModelError(str(exc)) from None
        if m not in self._modalities:
            built = ", ".join(x.value for x in self._modalities)
            raise ModelError(
                f"modality {m.value!r} is not built in this model (built: {built}); "
                f"build it with modalities=[..., {m.value!r}]"
            )
        return m

    def _parts(self, m: Modality) -> TowerParts:
        key = m.value
        return TowerParts(
            self.modality_preprocessors[key],
            self.modality_trunks[key],  # type: ignore[arg-type]
            self.modality_heads[key],
            self.modality_postprocessors[key],  # type: ignore[arg-type]
        )

    def tower(self, modality: str | Modality, *, video: bool = False) -> EmbeddingTower:
        """A standalone module for one modality, sharing this model's weights.

        Its ``forward(x)`` equals ``embed(modality, x)``. The vision tower takes still images
        ``[B, 3, 224, 224]``; with ``video=True`` it takes 2-frame clips ``[B, 3, 2, 224, 224]``.
        """
        m = self._check_modality(modality)
        tower = EmbeddingTower(m, self.config, self._parts(m), video=video)
        return tower.train(self.training)

    def embed(self, modality: str | Modality, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm ``[B, out_embed_dim]`` embeddings of one clip per row, before the temperature.

        Inputs: vision ``[B,3,224,224]`` or video ``[B,3,2,224,224]``; text int64 ``[B,77]``;
        audio ``[B,1,128,204]``; depth/thermal ``[B,1,224,224]``; IMU ``[B,6,2000]``.
        Raises ``ModelError`` for an unknown or unbuilt modality and for a wrong shape or dtype.
        """
        m = self._check_modality(modality)
        video = m is Modality.VISION and isinstance(x, torch.Tensor) and x.dim() == 5
        return self.tower(m, video=video)(x)

    def forward(self, inputs: Mapping[str | Modality, torch.Tensor]) -> dict[Modality, torch.Tensor]:
        """``embed`` for each ``{modality: tensor}`` entry; unit-norm, no temperature."""
        return {self._check_modality(k): self.embed(k, v) for k, v in inputs.items()}

    def logit_scale(self, modality: str | Modality) -> float:
        """The temperature that the reference multiplies this modality's embedding by.

        Vision 1.0; text exp(learned log scale) clipped at ``max_logit_scale`` (the checkpoint's
        value once loaded); audio 20, depth 5, thermal 10, IMU 5.
        """
        m = self._check_modality(modality)
        if m is Modality.VISION:
            return 1.0
        scale: LogitScale = self.modality_postprocessors[m.value][1]  # type: ignore[assignment]
        if scale.log_logit_scale.device.type == "meta":
            raise ModelError(f"logit_scale({m.value!r}): this model was built on the meta device and holds no values")
        return float(scale.scale().item())

    def extra_repr(self) -> str:
        return "modalities=" + ",".join(m.value for m in self._modalities)


def _parse_modalities(modalities: Iterable[str | Modality] | str | None) -> list[Modality]:
    if modalities is None:
        return list(ALL_MODALITIES)
    try:
        return Modality.parse_list(modalities if isinstance(modalities, str) else list(modalities))
    except ConfigError as exc:
        raise ModelError(f"modalities: {exc}") from None
    except TypeError:
        raise ModelError(f"modalities: expected an iterable of modality names, got {modalities!r}") from None


def _tensor_seed(seed: int, name: str) -> int:
    # Mix the key into the seed so each tensor's values depend only on (seed, key).
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (2**63 - 1)


def _trunc_normal_(param: torch.Tensor, seed: int) -> None:
    """Fill with N(0, 0.02^2) truncated at +-2 std by redrawing out-of-range values.

    About 6x faster on CPU than ``nn.init.trunc_normal_`` (whose erfinv dominates a 1.2 B
    parameter init); working in cache-sized chunks keeps the redraw pass cheap.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    in_place = param.device.type == "cpu" and param.dtype == torch.float32 and param.is_contiguous()
    # Values are always drawn on the CPU in fp32, so a seed gives the same weights on every device.
    values = param if in_place else torch.empty(param.shape, dtype=torch.float32)
    for chunk in values.view(-1).split(_INIT_CHUNK):
        chunk.normal_(0.0, 1.0, generator=generator)
        while True:
            outside = (chunk.abs() > _INIT_CUTOFF).nonzero().squeeze(1)
            if outside.numel() == 0:
                break
            chunk[outside] = torch.empty(outside.numel()).normal_(0.0, 1.0, generator=generator)
        chunk.mul_(_INIT_STD)
    if not in_place:
        param.copy_(values)


def build(
    name: str = "imagebind_huge",
    *,
    modalities: Iterable[str | Modality] | str | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    init: str = "random",
    **overrides: object,
) -> ImageBindModel:
    """Build a registered model in eval mode, optionally overriding official constructor keywords.

    ``overrides`` take the official keyword names (``vision_embed_dim``, ``imu_num_blocks``,
    ``audio_drop_path``, ...). ``modalities`` restricts which towers are allocated, ``device``
    may be ``"meta"`` for shape-only builds, ``seed`` seeds the random init, and ``init="none"``
    skips it (load a checkpoint right after). Unknown names raise ``ModelError``.
    """
    config = get_config(name)
    unknown = sorted(set(overrides) - set(OVERRIDABLE_FIELDS))
    if unknown:
        valid = ", ".join([*OVERRIDABLE_FIELDS, *BUILD_OPTIONS])
        raise ModelError(f"build({name!r}): unknown override(s) {', '.join(unknown)}; valid names: {valid}")
    if overrides:
        try:
            config = config.replace(**overrides)
        except TypeError as exc:
            raise ModelError(f"build({name!r}): {exc}") from None
    return ImageBindModel(config, modalities, device=device, seed=seed, init=init).eval()
