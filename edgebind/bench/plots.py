"""PNG plots of benchmark results (matplotlib, Agg backend, small files): latency per tower and
backend, and the achieved fraction of the attainable matmul rate."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .._lazy import require

logger = logging.getLogger(__name__)

_DPI = 90
_SIZE = (8.0, 3.6)


def _pyplot() -> Any:
    matplotlib = require("matplotlib", extra="dev", purpose="benchmark plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped(ax: Any, rows: list[dict[str, Any]], value: str, scale: float = 1.0) -> None:
    towers = list(dict.fromkeys(r["tower"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    width = 0.8 / max(1, len(backends))
    for j, backend in enumerate(backends):
        xs, ys = [], []
        for i, tower in enumerate(towers):
            row = next((r for r in rows if r["tower"] == tower and r["backend"] == backend), None)
            if row is not None and row.get(value) is not None:
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ys.append(row[value] * scale)
        ax.bar(xs, ys, width=width, label=backend)
    ax.set_xticks(range(len(towers)))
    ax.set_xticklabels(towers)


def plot_latency(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """p50 latency (log scale) per tower, one bar per backend, one panel per batch size."""
    plt = _pyplot()
    ok = [r for r in result["results"] if r.get("status") == "ok"]
    batches = sorted({r["batch"] for r in ok})
    fig, axes = plt.subplots(1, max(1, len(batches)), figsize=_SIZE, squeeze=False)
    for ax, batch in zip(axes[0], batches):
        _grouped(ax, [r for r in ok if r["batch"] == batch], "p50_ms")
        ax.set_yscale("log")
        ax.set_title(f"{result['model']}, batch {batch}", fontsize=9)
        ax.set_ylabel("p50 latency (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=6, loc="best")
    return _save(fig, plt, path)


def plot_fraction_of_peak(result: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Achieved fraction (%) of the attainable matmul rate of each configuration's precision."""
    plt = _pyplot()
    ok = [r for r in result["results"] if r.get("status") == "ok" and r.get("fraction_of_peak") is not None]
    batches = sorted({r["batch"] for r in ok}) or [1]
    fig, axes = plt.subplots(1, len(batches), figsize=_SIZE, squeeze=False)
    for ax, batch in zip(axes[0], batches):
        _grouped(ax, [r for r in ok if r["batch"] == batch], "fraction_of_peak", 100.0)
        ax.axhline(60, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(f"{result['model']}, batch {batch}: % of attainable rate", fontsize=9)
        ax.set_ylabel("% of FP32 / INT8 matmul rate", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=6, loc="best")
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> Path:
    from .._io import atomic_open

    path = Path(path)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=_DPI)
    plt.close(fig)
    logger.info("wrote %s (%d KB)", path, path.stat().st_size // 1024)
    return path
