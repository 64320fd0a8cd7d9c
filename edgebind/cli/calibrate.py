"""``edgebind calibrate``: build a calibration set (calib/val shards + manifest) from a folder or the default data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "build a calibration set from your sensor files (--from DIR) or from packaged sample data (--default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="src", metavar="DIR",
                        help="folder of your files (images, depth/, thermal/, audio, IMU .csv, text/); scanned recursively")
    source.add_argument("--default", action="store_true",
                        help="packaged sample data, for trying the pipeline only (calibrate on >= 500 own samples)")
    parser.add_argument("--modalities", default=None, metavar="LIST",
                        help="comma-separated subset, e.g. vision,audio (default: every modality found)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: calibration/<name of DIR> or calibration/default)")
    parser.add_argument("--val-fraction", type=float, default=None, metavar="F",
                        help="share of samples held out for validation (default 0.2, or 0.25 with --default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic calib/val split (default 0)")
    parser.add_argument("--fx", type=float, default=None, metavar="PX",
                        help="depth camera focal length in pixels (overrides depth/intrinsics.json)")
    parser.add_argument("--baseline", type=float, default=None, metavar="M",
                        help="stereo baseline in metres used to turn depth into disparity (with --fx)")
    parser.add_argument("--imu-rate", type=float, default=None, metavar="HZ",
                        help="IMU sample rate; needed when the CSVs have no time column")
    parser.add_argument("--text-file", default=None, metavar="FILE", help="captions, one per line (besides text/*.txt)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _default_out(args: argparse.Namespace) -> Path:
    name = "default" if args.default else (Path(args.src).resolve().name or "calibration")
    return Path("calibration") / name


def _print_table(result: object) -> None:
    data = result.to_dict()  # type: ignore[attr-defined]
    state = "up to date, nothing written" if data["up_to_date"] else "written"
    print(f"calibration set {data['path']} ({state})")
    print(f"{'modality':<10}{'samples':>9}{'calib rows':>12}{'val rows':>10}")
    for modality, rows in data["rows"].items():
        print(f"{modality:<10}{data['samples'][modality]:>9}{rows['calib']:>12}{rows['val']:>10}")
    skipped = data["skipped"]
    print(f"skipped files: {len(skipped)}")
    for item in skipped:
        print(f"  {item['file']}: {item['reason']}")


def run(args: argparse.Namespace) -> int:
    # Imported here so that `edgebind --help` stays fast.
    from ..calibration import build_default_set, build_from_folder
    from ..errors import ConfigError

    out = Path(args.out) if args.out else _default_out(args)
    if args.default:
        folder_only = [flag for flag, value in (("--fx", args.fx), ("--baseline", args.baseline),
                       ("--imu-rate", args.imu_rate), ("--text-file", args.text_file)) if value is not None]
        if folder_only:
            raise ConfigError(f"{', '.join(folder_only)}: only apply to --from DIR, not to --default")
        result = build_default_set(out, val_fraction=0.25 if args.val_fraction is None else args.val_fraction,
                                   seed=args.seed, modalities=args.modalities)
    else:
        result = build_from_folder(
            args.src, out, modalities=args.modalities,
            val_fraction=0.2 if args.val_fraction is None else args.val_fraction, seed=args.seed,
            text_file=args.text_file, fx=args.fx, baseline=args.baseline, imu_rate=args.imu_rate)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_table(result)
    return 0
