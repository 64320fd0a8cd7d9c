"""``edgebind record``: record live sensor sources into a replayable folder (``edgebind.runtime.recording``)."""

from __future__ import annotations

import argparse
import json

HELP = "record cameras, thermal, depth, microphone and serial IMU into a folder that replays deterministically (Ctrl-C stops)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", "-s", dest="sources", action="append", required=True, metavar="SPEC",
                        help="a source, repeatable: [name=]kind:target[;key=value...], kind one of camera, csi, "
                             "thermal, depth, mic, imu, synthetic; e.g. front=camera:0, thermal:/dev/video2, "
                             "depth:realsense, mic:default, 'imu:/dev/ttyUSB0;baudrate=921600'")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="recording folder to write")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C or every source finished)")
    parser.add_argument("--overwrite", action="store_true", help="replace a recording already in DIR")
    parser.add_argument("--int16", action="store_true", help="store audio as 16-bit PCM instead of float32")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..runtime.recording import RecordConfig, record

    config = RecordConfig(out=args.out, sources=tuple(args.sources), duration_s=args.duration,
                          overwrite=args.overwrite, audio_subtype="PCM_16" if args.int16 else "FLOAT")
    result = record(config)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0 if result.streams else 1
    state = "interrupted, flushed" if result.interrupted else "done"
    print(f"recording {result.folder} ({state}, {result.seconds:.1f} s)")
    width = max([len(n) for n in result.health] + [6]) + 2
    print(f"{'stream':<{width}}{'modality':<10}{'kind':<8}{'count':>8}  health")
    for name, stream in result.streams.items():
        h = result.health.get(name, {})
        print(f"{name:<{width}}{stream['modality']:<10}{stream['kind']:<8}{stream['count']:>8}  {h.get('state', '?')} "
              f"rejected={h.get('rejected', 0)} dropped={h.get('dropped', 0)} errors={h.get('errors', 0)}")
    for name, h in result.health.items():
        if name not in result.streams:
            print(f"{name:<{width}}no data: {h.get('last_error') or 'no samples'}")
    return 0 if result.streams else 1
