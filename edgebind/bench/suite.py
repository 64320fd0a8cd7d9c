"""``run_bench``: what ``edgebind bench`` does: (optionally) the matmul peak, then the latency benchmark
of a bundle, the target check, and the JSON / Markdown / PNG outputs.

Outputs in ``out`` (when given): ``latency.json`` (per-iteration times left out; they go to
``<raw_dir>/latency_times.json``), ``latency.md`` (latency table + targets), ``latency.png`` and
``fraction_of_peak.png``; with ``peak`` also ``peak.json`` / ``peak.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from .._config import ConfigMixin
from .._io import atomic_write_json
from ..errors import ConfigError
from .latency import LatencyConfig, run_latency, strip_raw
from .peak import PeakConfig, measure_peak
from .report import latency_markdown, peak_markdown, targets_markdown, write_outputs
from .targets import check_targets

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchOptions(ConfigMixin):
    """``latency``: what to time. ``peak``: measure the attainable matmul rate first (``"full"`` shapes,
    ``"quick"`` one small shape, ``"none"``) unless ``rates`` (``{"fp32": GFLOP/s, "int8": GOP/s}``) or
    ``rates_file`` (a saved ``peak.json``) give them.
    ``out``: folder for the outputs (None: none written); ``raw_dir``: per-iteration times (default
    ``out/raw``). ``plots``: write the PNGs."""

    latency: LatencyConfig
    peak: str = "none"
    rates: dict[str, float] | None = None
    rates_file: str | None = None
    out: str | None = None
    raw_dir: str | None = None
    plots: bool = True

    def __post_init__(self) -> None:
        if self.peak not in ("none", "quick", "full"):
            raise ConfigError(f"BenchOptions.peak: expected 'none', 'quick' or 'full', got {self.peak!r}")


def load_rates(path: str | os.PathLike[str]) -> dict[str, float]:
    """The ``attainable`` rates of a saved ``peak.json``."""
    try:
        data = json.loads(Path(path).read_text())
        rates = {k: float(v) for k, v in data["attainable"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a peak.json written by benchmarks/peak.py ({exc})") from None
    if not rates:
        raise ConfigError(f"{path}: holds no attainable rates")
    return rates


def run_bench(options: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Peak (optional), latency, targets, outputs. Returns the latency result with ``targets`` (and ``peak``)."""
    peak = None
    rates = dict(options.rates) if options.rates else None
    if rates is None and options.rates_file is not None:
        rates = load_rates(options.rates_file)
    elif rates is None and options.peak != "none":
        threads = options.latency.threads
        peak = measure_peak(PeakConfig.quick(threads) if options.peak == "quick" else PeakConfig(threads=threads))
        rates = peak["attainable"]
    result = run_latency(options.latency, rates=rates, progress=progress)
    result["targets"] = check_targets(result)
    if peak is not None:
        result["peak"] = {"attainable": peak["attainable"], "int8_over_fp32": peak["int8_over_fp32"]}
    if options.out is not None:
        write_bench_outputs(result, options.out, peak=peak, plots=options.plots, raw_dir=options.raw_dir)
    return result


def write_bench_outputs(result: dict[str, Any], out: str | os.PathLike[str], *, peak: dict[str, Any] | None = None,
                        plots: bool = True, raw_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write the latency JSON, Markdown and plots into ``out``, per-iteration times into ``raw_dir``."""
    out = Path(out)
    stripped, raw = strip_raw(result)
    markdown = latency_markdown(stripped) + "\n" + targets_markdown(stripped.get("targets", []))
    paths = write_outputs(out, "latency", stripped, markdown)
    atomic_write_json(Path(raw_dir or out / "raw") / "latency_times.json", raw)
    if peak is not None:
        paths += write_outputs(out, "peak", peak, peak_markdown(peak))
    if plots:
        from .plots import plot_fraction_of_peak, plot_latency

        paths.append(plot_latency(stripped, out / "latency.png"))
        if any(r.get("fraction_of_peak") is not None for r in stripped["results"]):
            paths.append(plot_fraction_of_peak(stripped, out / "fraction_of_peak.png"))
    return paths
