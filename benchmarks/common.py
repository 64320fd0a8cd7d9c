"""Shared plumbing of the benchmark scripts: result paths, logging, timing options, output writing.

The measurement code lives in ``edgebind.bench`` (importable, tested); the scripts here only parse
arguments, call it and write ``benchmarks/results/``. Environment records (CPU model and flags,
cores, library versions) come from ``edgebind.bench.environment``; peak memory is measured per
configuration in its own process (``edgebind.bench.worker``, ``edgebind.bench.memory``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from edgebind.bench.environment import environment_record, machine_class
from edgebind.bench.memory import export_peak_rss, maxrss_mib
from edgebind.bench.report import write_outputs
from edgebind.bench.timing import StopPolicy

__all__ = ["BENCH_DIR", "RAW", "RESULTS", "add_common_arguments", "done", "environment_record", "export_peak_rss",
           "machine_class", "maxrss_mib", "policy_from", "results_dir", "say", "setup_logging", "write_outputs"]

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
RAW = RESULTS / "raw"  # git-ignored: per-iteration times, work folders (bundles, recordings)


def setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    # The root logger stays at WARNING: onnxruntime.quantization logs every tensor through it at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    for name in ("benchmarks", "edgebind"):
        logging.getLogger(name).setLevel(level)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2: this machine class)")
    parser.add_argument("--quick", action="store_true", help="few iterations (smoke test); numbers are not stable")
    parser.add_argument("--min-iterations", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="measured time per configuration at least")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap on measured time per configuration")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="count", default=0)


def policy_from(args: argparse.Namespace) -> StopPolicy:
    if args.quick:
        return StopPolicy.quick()
    return StopPolicy(min_iterations=args.min_iterations, min_seconds=args.min_seconds, max_seconds=args.max_seconds)


def results_dir(args: argparse.Namespace, default: Path) -> Path:
    out = Path(getattr(args, "out", None) or default)
    out.mkdir(parents=True, exist_ok=True)
    return out


def say(message: str) -> None:
    logging.getLogger("benchmarks").info("%s", message)


def done(paths: list[Any]) -> None:
    for path in paths:
        say(f"wrote {path}")
