"""CPU latency of ONNX files under ONNX Runtime, measured the same way for every precision form."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError
from .fidelity import make_session
from .reader import model_input_names, normalize_feeds


def cpu_flags() -> dict[str, Any]:
    """The CPU model and the INT8 dot-product features ORT's INT8 kernels use (x86 VNNI, ARM dotprod)."""
    info: dict[str, Any] = {"machine": platform.machine(), "model": platform.processor() or None}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return info
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name" and not info.get("model"):
            info["model"] = value.strip()
    info["avx512_vnni"] = "avx512_vnni" in flags
    info["avx_vnni"] = "avx_vnni" in flags
    info["arm_dotprod"] = "asimddp" in flags
    info["logical_cpus"] = os.cpu_count()
    return info


def measure_latency_ms(path: str | os.PathLike[str], feed: Any, threads: int = 2, warmup: int = 3,
                       runs: int = 20) -> dict[str, float]:
    """Median / p90 / min wall time in ms of one ``session.run`` on ``feed`` (an array or a feed dict)."""
    if runs < 1 or warmup < 0:
        raise ConfigError(f"measure_latency_ms: expected runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    session = make_session(path, threads)
    feeds = normalize_feeds([feed], model_input_names(path), what="latency feed")[0]
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    return _summary(times, threads)


def compare_latency(paths: Mapping[str, str | os.PathLike[str]], feed: Any, threads: int = 2, warmup: int = 3,
                    runs: int = 20) -> dict[str, dict[str, float]]:
    """Latency of several forms of one model (e.g. fp32 / int8-qdq / int8-dynamic) on the same feed.

    The forms are timed round-robin, one run each in turn, so background load on a shared machine
    hits them alike; ``min_ms`` is the least noisy figure when the machine is busy.
    """
    if runs < 1 or warmup < 0:
        raise ConfigError(f"compare_latency: expected runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    sessions, feeds = {}, {}
    for name, path in paths.items():
        sessions[name] = make_session(path, threads)
        feeds[name] = normalize_feeds([feed], model_input_names(path), what="latency feed")[0]
        for _ in range(warmup):
            sessions[name].run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feeds[name])
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: _summary(values, threads) for name, values in times.items()}


def _summary(times: list[float], threads: int) -> dict[str, float]:
    arr = np.asarray(times)
    return {"median_ms": float(np.median(arr)), "p90_ms": float(np.percentile(arr, 90)), "min_ms": float(arr.min()),
            "runs": len(times), "threads": threads}
