"""``edgebind bench``: per-tower latency of every backend and precision of a bundle, measured side by side."""

from __future__ import annotations

import argparse
import json

HELP = "time every tower of a bundle on every available backend and precision (interleaved), with FLOPs and memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bench.runners import BACKENDS

    parser.add_argument("bundle", nargs="?", default="export/imagebind_tiny", help="bundle folder (manifest.json)")
    parser.add_argument("--modalities", default="", help="comma-separated towers (default: all in the bundle)")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated backends (default: all; unavailable ones are listed with the reason): "
                             f"{', '.join(BACKENDS)}")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every backend (default 2)")
    parser.add_argument("--quick", action="store_true", help="a few runs each (smoke test; numbers not stable)")
    parser.add_argument("--min-iterations", type=int, default=20)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="measured time per configuration at least")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap on measured time per configuration")
    parser.add_argument("--peak", choices=["none", "quick", "full"], default="none",
                        help="measure the attainable matmul rate first (for the fraction-of-peak columns)")
    parser.add_argument("--rates", help="use the attainable rates of a saved peak.json instead of measuring")
    parser.add_argument("--profile", action="store_true", help="ORT profiles of the CPU forms (where time goes)")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs from the ONNX graphs")
    parser.add_argument("--engines-root", help="engine cache folder for GPU backends (default: engines)")
    parser.add_argument("--out", help="write latency.json / latency.md / PNG plots into this folder")
    parser.add_argument("--json", action="store_true", help="print the JSON result")


def run(args: argparse.Namespace) -> int:
    from ..bench.latency import LatencyConfig, strip_raw
    from ..bench.report import json_safe, latency_markdown, targets_markdown
    from ..bench.suite import BenchOptions, run_bench
    from ..bench.timing import StopPolicy

    policy = StopPolicy.quick() if args.quick else StopPolicy(
        min_iterations=args.min_iterations, min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    latency = LatencyConfig(
        bundle=args.bundle, modalities=tuple(m for m in args.modalities.split(",") if m),
        backends=tuple(b for b in args.backends.split(",") if b), batch_sizes=tuple(args.batch),
        threads=args.threads, policy=policy, flops=not args.no_flops, profile=args.profile,
        engines_root=args.engines_root)
    progress = None if args.json else (lambda msg: print(f"... {msg}", flush=True))
    result, _ = strip_raw(run_bench(BenchOptions(latency=latency, peak=args.peak, rates_file=args.rates,
                                                 out=args.out), progress=progress))
    if args.json:
        print(json.dumps(json_safe(result), indent=2))
        return 0
    print(latency_markdown(result))
    print(targets_markdown(result.get("targets", [])))
    if args.out:
        print(f"results written to {args.out}")
    return 0
