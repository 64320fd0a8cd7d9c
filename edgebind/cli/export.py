"""``edgebind export``: per-tower ONNX, FP16 and INT8 models with measured fidelity, and the bundle manifest."""

from __future__ import annotations

import argparse
import json

from ..modality import ALL_MODALITIES

HELP = "export each modality tower to ONNX (FP32), and FP16/INT8 models with measured fidelity, into a bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="imagebind_tiny", help="imagebind_huge or imagebind_tiny (default)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="official checkpoint file (imagebind_huge.pth)")
    weights.add_argument("--download", action="store_true", help="download the official checkpoint first (CC BY-NC-SA)")
    weights.add_argument("--random-init", action="store_true", help="seeded random weights (pipeline and latency tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    parser.add_argument("--modalities", default=",".join(m.value for m in ALL_MODALITIES),
                        help="comma-separated towers to export (default: all six)")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "int8"],
                        help="precisions to produce; fp16/int8 are derived from fp32 (default: fp32)")
    parser.add_argument("--calibration", help="calibration set folder from `edgebind calibrate` (default: the "
                        "packaged-data set in calibration/default, built if absent)")
    parser.add_argument("--out", help="bundle folder (default: export/<model>)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--int8-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    parser.add_argument("--int8-min-cosine", type=float, default=0.99,
                        help="INT8 mean-cosine threshold against FP32; nodes return to float until it is met")
    parser.add_argument("--fp16-min-cosine", type=float, default=0.999)
    parser.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement of INT8 forms")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for checks and timing")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    from ..export.pipeline import ExportConfig, run_export

    checkpoint = args.checkpoint
    if args.download:
        from ..models.download import fetch_checkpoint

        checkpoint = str(fetch_checkpoint(progress=not args.json))
    config = ExportConfig(
        model=args.model, modalities=tuple(args.modalities.split(",")), precisions=tuple(args.precision),
        checkpoint=checkpoint, random_init=args.random_init, seed=args.seed, calibration=args.calibration,
        out=args.out, opset=args.opset, int8_method=args.int8_method, int8_min_mean_cosine=args.int8_min_cosine,
        fp16_min_mean_cosine=args.fp16_min_cosine, measure_latency=not args.no_latency, threads=args.threads,
    )
    result = run_export(config, progress=not args.json)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"bundle: {result.out_dir}  (manifest.json)")
    if result.calibration_dir is not None:
        print(f"calibration/validation data: {result.calibration_dir}")
    print(f"{'tower':8s} {'form':13s} {'MB':>8s} {'mean cos':>9s} {'min cos':>9s} {'top-1':>6s}  backends")
    for row in result.summary_rows():
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(f"{row['tower']:8s} {row['form']:13s} {row['size_mb']:8.2f} {fmt(row['mean_cosine'], '9.5f')} "
              f"{fmt(row['min_cosine'], '9.5f')} {fmt(row['top1_agreement'], '6.2f')}  {','.join(row['backends'])}")
    if result.up_to_date and not result.built:
        print("everything was up to date")
    return 0
