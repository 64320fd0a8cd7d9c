"""``edgebind build``: build (or refresh) the engines of a bundle on this device."""

from __future__ import annotations

import argparse
import json

HELP = "build or refresh the engines (TensorRT plans, ONNX Runtime caches) of a bundle on this device"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", help="bundle folder (default: the only one under export/)")
    parser.add_argument("--precision", nargs="+", default=None, metavar="P",
                        help="fp32, fp16, int8 or a form (int8-qdq, int8-dynamic); default: what `auto` picks per tower")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "tensorrt", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda",
                                 "onnxruntime-tensorrt"],
                        help="auto (TensorRT if present, else the best ONNX Runtime provider); tensorrt fails with "
                             "exit code 3 when TensorRT is absent")
    parser.add_argument("--modalities", metavar="LIST", help="comma-separated towers (default: all in the bundle)")
    parser.add_argument("--engines", default="engines", metavar="DIR", help="engine cache folder (default: engines)")
    parser.add_argument("--refresh", action="store_true", help="rebuild ONNX Runtime caches even when still valid")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..engines.select import build_engines, resolve_bundle

    report = build_engines(
        resolve_bundle(args.bundle), precisions=args.precision, backend=args.backend, engines_root=args.engines,
        modalities=args.modalities.split(",") if args.modalities else None, threads=args.threads,
        refresh=args.refresh,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    print(f"bundle {report.bundle} -> {report.engines_root} on {report.backend}")
    print(f"{'tower':8s} {'asked':7s} {'backend':21s} {'form':13s} {'seconds':>8s}  cache / error")
    for row in report.rows:
        cache = row["cache"] or {}
        what = f"FAILED: {row['error']}" if row["error"] else f"{cache.get('status', '-')} {cache.get('folder') or ''}"
        print(f"{row['tower']:8s} {row['requested']:7s} {row['backend']:21s} {row['form'] or '-':13s} "
              f"{row['seconds']:8.2f}  {what}")
    if report.rows and report.rows[0]["reason"]:
        print(f"why: {report.rows[0]['reason']}")
    return 0 if report.ok else 1
