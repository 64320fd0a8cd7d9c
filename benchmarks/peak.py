"""The machine's attainable matmul rate through ONNX Runtime: FP32 and dynamic-INT8 single-MatMul models.

    python benchmarks/peak.py [--quick] [--threads 2]

Writes ``peak.json`` / ``peak.md`` into ``--out`` (default ``benchmarks/results``); ``latency.py
--rates benchmarks/results/peak.json`` uses it for the fraction-of-peak columns.
"""

from __future__ import annotations

import argparse
import sys

from common import RESULTS, add_common_arguments, done, environment_record, setup_logging, write_outputs

from edgebind.bench.peak import PeakConfig, measure_peak
from edgebind.bench.report import peak_markdown
from edgebind.bench.timing import StopPolicy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="results folder (default: benchmarks/results)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    if args.quick:
        config = PeakConfig.quick(args.threads)
    else:
        config = PeakConfig(threads=args.threads, policy=StopPolicy(
            min_iterations=args.min_iterations, min_seconds=min(args.min_seconds, 2.0), max_seconds=args.max_seconds))
    result = measure_peak(config)
    result["environment"] = environment_record(threads=args.threads, gpu=False)
    done(write_outputs(args.out or RESULTS, "peak", result, peak_markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
