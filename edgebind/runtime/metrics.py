"""Runtime metrics: per-modality latency percentiles from bounded reservoirs, and drop/stale counters.

Memory is fixed: each :class:`LatencyStats` keeps at most ``capacity`` values (reservoir sampling,
Vitter's algorithm R with a seeded generator, so a replay gives the same percentiles for the same
values) plus count, mean, min, max and the last value. Thread-safe.

Latency is "capture -> embedding": from the capture time of the newest data in the window to the
moment its embedding is ready (see :mod:`edgebind.runtime.pipeline` for the replay definition).
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import ConfigError

__all__ = ["LatencyStats", "ModalityMetrics", "RuntimeMetrics", "format_latency_table"]

PERCENTILES = (50, 90, 99)


class LatencyStats:
    """A bounded reservoir of durations in seconds; ``summary()`` reports milliseconds."""

    def __init__(self, capacity: int = 1024, seed: int = 0) -> None:
        if capacity < 1:
            raise ConfigError(f"LatencyStats.capacity: expected >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._values: list[float] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.count = 0
        self._sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.last: float | None = None

    def add(self, seconds: float) -> None:
        value = float(seconds)
        if not math.isfinite(value):
            return
        with self._lock:
            self.count += 1
            self._sum += value
            self.min = min(self.min, value)
            self.max = max(self.max, value)
            self.last = value
            if len(self._values) < self.capacity:
                self._values.append(value)
            else:
                j = self._rng.randrange(self.count)
                if j < self.capacity:
                    self._values[j] = value

    def __len__(self) -> int:
        return len(self._values)

    def percentiles(self, qs: Iterable[float] = PERCENTILES) -> dict[str, float | None]:
        """{"p50": seconds, ...}; None before the first value."""
        with self._lock:
            values = np.asarray(self._values, dtype=np.float64)
        qs = list(qs)
        if values.size == 0:
            return {f"p{q:g}": None for q in qs}
        return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(values, qs))}

    def summary(self) -> dict[str, Any]:
        """Milliseconds: count, mean, min, max, last, p50, p90, p99 (None where no value yet)."""
        ms = {k: (None if v is None else v * 1e3) for k, v in self.percentiles().items()}
        with self._lock:
            have = self.count > 0
            out = {
                "count": self.count,
                "mean_ms": self._sum / self.count * 1e3 if have else None,
                "min_ms": self.min * 1e3 if have else None,
                "max_ms": self.max * 1e3 if have else None,
                "last_ms": self.last * 1e3 if self.last is not None else None,
            }
        out.update({f"{k}_ms": v for k, v in ms.items()})
        return out


@dataclasses.dataclass
class ModalityMetrics:
    """Counters and latencies of one modality lane."""

    modality: str
    capacity: int = 1024
    windows: int = 0
    """Inputs embedded."""
    stale: int = 0
    """Data replaced by newer data after its slot had come, never embedded (newest wins under overload)."""
    skipped_hops: int = 0
    """Hops of a sliding window (audio, IMU) that were never embedded because the lane ran late."""
    decimated: int = 0
    """Frames replaced before their slot came (sensor faster than the target rate; expected, not a drop)."""
    rejected: int = 0
    """Samples the window refused (wrong shape/dtype, missing depth geometry, ...)."""
    preprocess_errors: int = 0
    engine_errors: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.latency = LatencyStats(self.capacity)
        self.preprocess = LatencyStats(self.capacity)
        self.inference = LatencyStats(self.capacity)

    @property
    def dropped(self) -> int:
        """Stale inputs never embedded: stale frames/chunks plus skipped hops."""
        return self.stale + self.skipped_hops

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "dropped": self.dropped,
            "stale": self.stale,
            "skipped_hops": self.skipped_hops,
            "decimated": self.decimated,
            "rejected": self.rejected,
            "preprocess_errors": self.preprocess_errors,
            "engine_errors": self.engine_errors,
            "last_error": self.last_error,
            "latency": self.latency.summary(),
            "preprocess": self.preprocess.summary(),
            "inference": self.inference.summary(),
        }


class RuntimeMetrics:
    """All lanes' metrics plus the result queue's counters."""

    def __init__(self, modalities: Iterable[str], capacity: int = 1024) -> None:
        self.modalities: dict[str, ModalityMetrics] = {m: ModalityMetrics(m, capacity) for m in modalities}
        self.results = 0
        self.results_dropped = 0
        """Results discarded because the consumer of ``results()`` fell behind (newest wins)."""

    def __getitem__(self, modality: str) -> ModalityMetrics:
        return self.modalities[modality]

    def snapshot(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "results_dropped": self.results_dropped,
            "modalities": {m: mm.to_dict() for m, mm in self.modalities.items()},
        }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_latency_table(snapshot: Mapping[str, Any]) -> str:
    """A fixed-width text table of ``RuntimeMetrics.snapshot()``: one row per modality, milliseconds."""
    header = ("modality", "windows", "dropped", "rejected", "p50", "p90", "p99", "max", "infer p50", "prep p50")
    rows = [header]
    for name, m in snapshot.get("modalities", {}).items():
        lat, inf, pre = m["latency"], m["inference"], m["preprocess"]
        rows.append((
            name, str(m["windows"]), str(m["dropped"]), str(m["rejected"] + m["preprocess_errors"]),
            _fmt(lat["p50_ms"]), _fmt(lat["p90_ms"]), _fmt(lat["p99_ms"]), _fmt(lat["max_ms"]),
            _fmt(inf["p50_ms"]), _fmt(pre["p50_ms"]),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("latency = capture -> embedding (ms); infer/prep = engine run / preprocessing (ms)")
    return "\n".join(lines)
