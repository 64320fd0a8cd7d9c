"""Zero-shot recognition against a label bank, and event hysteresis.

The label bank (:class:`edgebind.labels.LabelBank`) holds text embeddings computed once at export
time, so the device needs no text tower. :class:`Recognizer` gives, per stream ("vision", "audio",
..., "fused"), the top-k labels as ``(label, cosine, probability)`` with ImageBind's zero-shot rule
(softmax over labels of ``logit_scale * cosine``).

Events (:class:`HysteresisTracker`): a label *enters* on a stream once its score has stayed at or
above ``enter`` for ``min_duration_s`` (timed on the runtime's data clock), and *exits* once it has
stayed below ``exit`` for ``min_duration_s``. ``exit < enter`` gives the hysteresis band that stops a
label from flickering when its score hovers near one threshold. The score is the softmax probability
(``score="prob"``) or the cosine (``score="cosine"``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Optional

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError

__all__ = ["Event", "HysteresisConfig", "HysteresisTracker", "Recognizer", "TopK"]

TopK = list[tuple[str, float, float]]
"""Best first: (label, cosine, probability)."""


@dataclasses.dataclass(frozen=True)
class HysteresisConfig(ConfigMixin):
    enter: float = 0.5
    exit: float = 0.3
    min_duration_s: float = 0.0
    score: Literal["prob", "cosine"] = "prob"

    def __post_init__(self) -> None:
        for name in ("enter", "exit", "min_duration_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"HysteresisConfig.{name}: expected a number, got {value!r}")
        if self.exit > self.enter:
            raise ConfigError(f"HysteresisConfig: exit ({self.exit}) must be <= enter ({self.enter})")
        if self.min_duration_s < 0:
            raise ConfigError(f"HysteresisConfig.min_duration_s: expected >= 0, got {self.min_duration_s!r}")


@dataclasses.dataclass(frozen=True)
class Event:
    """A label entering or leaving a stream's recognised set."""

    kind: Literal["enter", "exit"]
    stream: str
    """Modality value or "fused"."""
    label: str
    t: float
    """Data-clock time at which the transition was confirmed."""
    score: float
    since: float
    """When the score first crossed the threshold (so ``t - since >= min_duration_s``)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not math.isfinite(d["score"]):
            d["score"] = None  # an exit forced by staleness has no score
        return d


class Recognizer:
    """Top-k labels of an embedding, against a label bank."""

    def __init__(self, bank: Any, k: int = 5) -> None:
        if k < 1:
            raise ConfigError(f"top_k: expected k >= 1, got {k}")
        self.bank = bank
        self.k = min(int(k), len(bank.labels))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.bank.labels)

    def scores(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cosines [N], probabilities [N]) of one embedding [D] against every label."""
        cos = self.bank.similarities(embedding)[0]
        logits = self.bank.logit_scale * cos.astype(np.float64)
        p = np.exp(logits - logits.max())
        return cos, p / p.sum()

    def top_k(self, embedding: np.ndarray) -> TopK:
        cos, prob = self.scores(embedding)
        order = np.argsort(-cos, kind="stable")[: self.k]
        return [(self.bank.labels[i], float(cos[i]), float(prob[i])) for i in order]


@dataclasses.dataclass
class _LabelState:
    active: bool = False
    since: Optional[float] = None  # when the pending transition's condition first held


class HysteresisTracker:
    """Enter/exit events for every label of one stream (see the module docstring)."""

    def __init__(self, stream: str, labels: tuple[str, ...], config: HysteresisConfig) -> None:
        self.stream = stream
        self.labels = tuple(labels)
        self.config = config
        self._state = {label: _LabelState() for label in self.labels}

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if self._state[label].active)

    def update(self, t: float, cosines: np.ndarray, probs: np.ndarray) -> list[Event]:
        """Feed one observation at data time ``t``; returns the events it confirms (label order)."""
        scores = probs if self.config.score == "prob" else cosines
        events = []
        for label, score in zip(self.labels, np.asarray(scores, dtype=np.float64)):
            state = self._state[label]
            crossing = score < self.config.exit if state.active else score >= self.config.enter
            if not crossing:
                state.since = None
                continue
            if state.since is None:
                state.since = t
            if t - state.since >= self.config.min_duration_s:
                state.active = not state.active
                kind: Literal["enter", "exit"] = "enter" if state.active else "exit"
                events.append(Event(kind, self.stream, label, float(t), float(score), float(state.since)))
                state.since = None
        return events

    def expire(self, t: float) -> list[Event]:
        """Exit every active label at once (the stream went stale or its source stopped)."""
        events = []
        for label in self.labels:
            state = self._state[label]
            if state.active:
                state.active, state.since = False, None
                events.append(Event("exit", self.stream, label, float(t), float("nan"), float(t)))
        return events


def check_bank_width(bank: Any, widths: Mapping[str, int]) -> None:
    """ConfigError unless every tower's output width equals the bank's embedding width."""
    bad = {m: w for m, w in widths.items() if w != bank.embed_dim}
    if bad:
        raise ConfigError(f"label bank has {bank.embed_dim}-d embeddings but towers output {bad}; "
                          "use a bank made from this bundle (edgebind labels --bundle DIR)")
