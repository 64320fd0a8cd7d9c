"""Per-tower latency of every backend and precision of a bundle (batch 1 and 8), measured interleaved.

    python benchmarks/latency.py export/imagebind_tiny [--rates benchmarks/results/peak.json] [--quick]

Writes ``latency.json`` / ``latency.md`` / ``latency.png`` / ``fraction_of_peak.png`` into
``--out`` (default ``benchmarks/results/<model>``); per-iteration times into
``benchmarks/results/raw/<model>``. Same measurement as ``edgebind bench`` (``edgebind.bench.suite``).
"""

from __future__ import annotations

import argparse
import sys

from common import RAW, RESULTS, add_common_arguments, policy_from, say, setup_logging

from edgebind.bench.latency import LatencyConfig
from edgebind.bench.runners import BACKENDS
from edgebind.bench.suite import BenchOptions, run_bench
from edgebind.bundle.manifest import load_manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle folder (manifest.json)")
    parser.add_argument("--modalities", default="", help="comma-separated towers (default: all)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated backends (default: all)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rates", help="peak.json from benchmarks/peak.py (else --peak measures it)")
    parser.add_argument("--peak", choices=["none", "quick", "full"], default="none")
    parser.add_argument("--profile", action="store_true", help="ORT profiles of the CPU forms")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<model>)")
    parser.add_argument("--raw", help="per-iteration times folder (default: benchmarks/results/raw/<model>)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    model = load_manifest(args.bundle).model
    latency = LatencyConfig(bundle=args.bundle, modalities=tuple(m for m in args.modalities.split(",") if m),
                            backends=tuple(b for b in args.backends.split(",") if b), batch_sizes=tuple(args.batch),
                            threads=args.threads, policy=policy_from(args), profile=args.profile)
    out = args.out or str(RESULTS / model)
    result = run_bench(BenchOptions(latency=latency, peak=args.peak, rates_file=args.rates, out=out,
                                    raw_dir=args.raw or str(RAW / model), plots=not args.no_plots), progress=say)
    failed = [t["tower"] for t in result["targets"] if t["status"] == "fail"]
    say(f"results in {out}; targets missed by: {', '.join(failed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
