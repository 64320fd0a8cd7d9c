"""Interleaved timing: several configurations run round-robin so background load hits them alike.

After ``warmup`` throw-away runs of each configuration, every round runs each configuration once
(the starting position rotates each round, so no configuration always follows the same one).
Rounds continue until every configuration has at least ``min_iterations`` runs and ``min_seconds``
of measured time and its median has stabilised (the median of all runs and of the first 3/4 of them
differ by less than ``stability``; not required when ``require_stable`` is off), or until a
configuration has used ``max_seconds`` (then the result says ``stable: False``). Durations are
wall-clock ``time.perf_counter`` in milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping

import numpy as np

from .._config import ConfigMixin
from ..errors import ConfigError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StopPolicy(ConfigMixin):
    """When interleaved timing stops (see the module docstring)."""

    warmup: int = 3
    min_iterations: int = 20
    min_seconds: float = 3.0
    max_seconds: float = 60.0
    stability: float = 0.02
    require_stable: bool = True
    min_after_cap: int = 3

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_iterations < 1 or self.min_after_cap < 1:
            raise ConfigError(f"StopPolicy: expected warmup >= 0, min_iterations >= 1, min_after_cap >= 1; got {self}")
        if self.min_seconds < 0 or self.max_seconds <= 0 or self.stability <= 0:
            raise ConfigError(f"StopPolicy: expected min_seconds >= 0, max_seconds > 0, stability > 0; got {self}")

    @classmethod
    def quick(cls) -> "StopPolicy":
        """A few runs each, for smoke tests: numbers are not stable and must not be quoted."""
        return cls(warmup=1, min_iterations=3, min_seconds=0.0, max_seconds=2.0, require_stable=False, min_after_cap=2)


def summarize(times_ms: list[float]) -> dict[str, Any]:
    """p50 / p90 / p99 / mean / min / max / std in ms, and the run count."""
    if not times_ms:
        raise ConfigError("summarize: no timings")
    arr = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "std_ms": float(arr.std()),
        "iterations": int(arr.size),
    }


def is_stable(times_ms: list[float], tolerance: float) -> bool:
    """True when the median of all runs and of the first 3/4 of them differ by less than ``tolerance``."""
    if len(times_ms) < 8:
        return False
    full = float(np.median(times_ms))
    head = float(np.median(times_ms[: (3 * len(times_ms)) // 4]))
    return full > 0 and abs(full - head) / full < tolerance


def interleave(runs: Mapping[str, Callable[[], Any]], policy: StopPolicy) -> dict[str, dict[str, Any]]:
    """Time each callable round-robin under ``policy``.

    A callable that returns a float is taken to have timed itself (seconds): that value is used
    instead of the wall time of the call (so inter-process messaging is not counted).

    Returns ``{name: {"times_ms": [...], "stable": bool, "stop": why}}``. A callable that raises
    is timed no further; its entry gets ``"error": message`` (and whatever it measured so far).
    """
    if not runs:
        raise ConfigError("interleave: no configurations to time")
    names = list(runs)
    errors: dict[str, str] = {}
    for name in names:
        for _ in range(policy.warmup):
            try:
                runs[name]()
            except Exception as exc:  # noqa: BLE001 - one broken backend must not stop the others
                errors[name] = f"{type(exc).__name__}: {exc}"
                logger.warning("%s failed during warm-up: %s", name, errors[name])
                break
    times: dict[str, list[float]] = {name: [] for name in names}
    active = [n for n in names if n not in errors]
    stop = "no configuration ran"
    rnd = 0
    while active:
        order = active[rnd % len(active):] + active[: rnd % len(active)]
        rnd += 1
        for name in order:
            t0 = time.perf_counter()
            try:
                measured = runs[name]()
            except Exception as exc:  # noqa: BLE001
                errors[name] = f"{type(exc).__name__}: {exc}"
                logger.warning("%s failed: %s", name, errors[name])
                continue
            elapsed = time.perf_counter() - t0
            if isinstance(measured, float):  # the callable timed itself (e.g. in a worker process)
                elapsed = measured
            times[name].append(elapsed * 1000.0)
        active = [n for n in active if n not in errors]
        if not active:
            break
        spent = {n: sum(times[n]) / 1000.0 for n in active}
        counts = {n: len(times[n]) for n in active}
        done = all(counts[n] >= policy.min_iterations and spent[n] >= policy.min_seconds
                   and (not policy.require_stable or is_stable(times[n], policy.stability)) for n in active)
        if done:
            stop = "stable" if policy.require_stable else "min_iterations reached"
            break
        if max(spent.values()) >= policy.max_seconds and min(counts.values()) >= policy.min_after_cap:
            stop = f"max_seconds ({policy.max_seconds:g} s) reached"
            break
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        entry: dict[str, Any] = {"times_ms": times[name]}
        if name in errors:
            entry["error"] = errors[name]
        entry["stable"] = name not in errors and bool(times[name]) and is_stable(times[name], policy.stability) \
            and len(times[name]) >= policy.min_iterations
        entry["stop"] = "error" if name in errors else stop
        out[name] = entry
    return out


def finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
