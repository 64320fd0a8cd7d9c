"""``edgebind verify``: every backend/precision on this device against the ONNX Runtime FP32 reference."""

from __future__ import annotations

import argparse
import json

HELP = "check every engine this device can run against ONNX Runtime FP32 on the validation split (exit 1 on a failure)"


def _threshold(text: str) -> tuple[str, float]:
    precision, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return precision.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PRECISION=MIN_MEAN_COSINE like int8=0.99, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="?", help="bundle folder (default: the only one under export/)")
    parser.add_argument("--calibration", metavar="DIR",
                        help="calibration set whose validation split is used (default: calibration/default if present, "
                             "else synthetic inputs)")
    parser.add_argument("--backend", nargs="+", metavar="B",
                        help="limit to onnxruntime-cpu, onnxruntime-cuda, onnxruntime-tensorrt, tensorrt or "
                             "onnxruntime (all ORT providers); a named backend that is absent fails")
    parser.add_argument("--precision", nargs="+", metavar="P", help="limit to fp32, fp16, int8 or a form (int8-qdq ...)")
    parser.add_argument("--threshold", action="append", type=_threshold, default=[], metavar="PREC=COS",
                        help="minimum mean cosine per precision (defaults fp16=0.999, int8=0.99, fp32=0.9999); repeatable")
    parser.add_argument("--modalities", metavar="LIST", help="comma-separated towers (default: all in the bundle)")
    parser.add_argument("--engines", default="engines", metavar="DIR", help="engine cache folder (default: engines)")
    parser.add_argument("--all-forms", action="store_true",
                        help="also run forms not meant for a backend (e.g. fp16/int8-qdq on the CPU EP)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _fmt(value: object, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    from ..engines.select import resolve_bundle
    from ..engines.verify import verify_bundle

    report = verify_bundle(
        resolve_bundle(args.bundle), calibration=args.calibration, backends=args.backend, precisions=args.precision,
        thresholds=dict(args.threshold), engines_root=args.engines, threads=args.threads, all_forms=args.all_forms,
        modalities=args.modalities.split(",") if args.modalities else None,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.passed else 1
    print(f"bundle {report.bundle}; reference: {report.reference}")
    for tower, source in report.data.items():
        print(f"  {tower}: {source}")
    for backend, state in report.backends.items():
        print(f"  {backend}: {state}")
    print(f"{'tower':8s} {'backend':21s} {'form':13s} {'mean cos':>9s} {'min cos':>9s} {'top-1':>6s} "
          f"{'max abs':>9s} {'n':>4s} {'min mean':>9s}  result")
    for r in report.rows:
        result = "pass" if r.passed else f"FAIL{': ' + r.error if r.error else ''}"
        print(f"{r.tower:8s} {r.backend:21s} {r.form:13s} {_fmt(r.mean_cosine, '9.5f')} {_fmt(r.min_cosine, '9.5f')} "
              f"{_fmt(r.top1_agreement, '6.2f')} {_fmt(r.max_abs_diff, '9.2e')} {r.n:4d} {_fmt(r.threshold, '9.4f')}  "
              f"{result}")
    if not report.rows:
        print("nothing to compare: this device runs only the reference (onnxruntime-cpu fp32) of this bundle")
    print("all rows pass" if report.passed else f"{len(report.failed)} of {len(report.rows)} rows FAIL")
    return 0 if report.passed else 1
