"""Fusion of per-modality embeddings into one vector in the shared space.

ImageBind maps every modality into one space, so a weighted sum of unit-norm embeddings is a
meaningful query ("what is going on, seen and heard"). The fused embedding is

    fused = normalise( sum_m w_m * e_m / |e_m| )   over the modalities m that are fresh,

where fresh means ``age <= staleness_s`` (the embedding's newest data is at most that old) and
``w_m > 0``. With no fresh modality (or a zero sum) there is no fused embedding (None). A sensor
that stops therefore drops out of the fused vector after ``staleness_s`` instead of dragging it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError
from ..modality import Modality

__all__ = ["FusionConfig", "FusionResult", "fuse"]


@dataclasses.dataclass(frozen=True)
class FusionConfig(ConfigMixin):
    """Weights per modality (missing ones default to ``default_weight``) and the staleness bound."""

    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    default_weight: float = 1.0
    staleness_s: float = 1.0
    min_modalities: int = 1
    """Fewer fresh modalities than this give no fused embedding."""

    def __post_init__(self) -> None:
        clean: dict[str, float] = {}
        for key, value in dict(self.weights).items():
            name = Modality.parse(key).value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"FusionConfig.weights.{name}: expected a number >= 0, got {value!r}")
            clean[name] = float(value)
        object.__setattr__(self, "weights", clean)
        if not (math.isfinite(self.default_weight) and self.default_weight >= 0):
            raise ConfigError(f"FusionConfig.default_weight: expected a number >= 0, got {self.default_weight!r}")
        if not (self.staleness_s > 0):
            raise ConfigError(f"FusionConfig.staleness_s: expected > 0 seconds, got {self.staleness_s!r}")
        if self.min_modalities < 1:
            raise ConfigError(f"FusionConfig.min_modalities: expected >= 1, got {self.min_modalities!r}")

    def weight(self, modality: str) -> float:
        return self.weights.get(modality, self.default_weight)


@dataclasses.dataclass(frozen=True)
class FusionResult:
    embedding: Optional[np.ndarray]
    """Unit-norm fused embedding [D], or None."""
    modalities: tuple[str, ...]
    """The modalities that contributed, in a fixed (sorted) order."""


def fuse(
    embeddings: Mapping[str, np.ndarray],
    ages: Mapping[str, float],
    config: FusionConfig | None = None,
) -> FusionResult:
    """Fuse the fresh embeddings (see the module docstring). ``embeddings``/``ages`` are keyed by modality."""
    config = config or FusionConfig()
    used = []
    total: Optional[np.ndarray] = None
    for name in sorted(embeddings):  # fixed order: float sums are then identical run to run
        age = ages.get(name, math.inf)
        weight = config.weight(name)
        if weight <= 0 or not age <= config.staleness_s:
            continue
        e = np.asarray(embeddings[name], dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(e))
        if not (math.isfinite(norm) and norm > 0):
            continue
        term = weight * e / norm
        if total is not None and total.shape != term.shape:
            raise ConfigError(f"fuse: embedding widths differ ({name} has {term.shape[0]}, others {total.shape[0]})")
        total = term if total is None else total + term
        used.append(name)
    if total is None or len(used) < config.min_modalities:
        return FusionResult(None, tuple(used))
    norm = float(np.linalg.norm(total))
    if not norm > 1e-12:
        return FusionResult(None, tuple(used))
    return FusionResult((total / norm).astype(np.float32), tuple(used))
