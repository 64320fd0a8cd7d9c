"""``edgebind run``: live (or replayed) sensors -> embeddings -> zero-shot labels, one line per result."""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Any

HELP = ("run sensors (or a replay) through the bundle's engines: per-modality and fused embeddings, zero-shot "
        "labels, events and latencies, one line (--json: one JSON object) per result; Ctrl-C stops")


def _pairs(values: list[str], flag: str, cast: Any = float) -> dict[str, Any]:
    out = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"{flag} {item!r}: expected MODALITY=VALUE")
        try:
            out[key.strip()] = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {item!r}: {value!r} is not a number") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", default="export/imagebind_tiny", help="exported bundle folder")
    src = parser.add_argument_group("sources (live) or --replay")
    src.add_argument("--camera", metavar="TARGET", help="camera index, device or URL, e.g. 0 (spec camera:TARGET)")
    src.add_argument("--mic", metavar="DEVICE", help="microphone, e.g. default (spec mic:DEVICE)")
    src.add_argument("--imu", metavar="PORT[:BAUD]", help="serial IMU, e.g. /dev/ttyUSB0:115200")
    src.add_argument("--depth", metavar="TARGET", help="depth camera, e.g. realsense")
    src.add_argument("--thermal", metavar="TARGET", help="thermal camera, e.g. /dev/video2")
    src.add_argument("--source", "-s", dest="sources", action="append", default=[], metavar="SPEC",
                     help="any source spec, repeatable ([name=]kind:target[;key=value...], see `edgebind record`)")
    src.add_argument("--replay", metavar="PATH", help="replay a recording folder or rosbag2/MCAP bag instead")
    src.add_argument("--realtime", action="store_true",
                     help="replay at recorded speed (live mode) instead of as fast as possible (deterministic)")
    src.add_argument("--demo", metavar="DIR", nargs="?", const="recordings/demo",
                     help="replay the demo recording built from packaged sample data (built into DIR if absent, "
                          "default recordings/demo), with its demo labels")
    parser.add_argument("--labels", help="label bank JSON from `edgebind labels` (default: the bundle's own)")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--record", metavar="DIR", help="also record every sample into DIR")
    sched = parser.add_argument_group("scheduling and fusion")
    sched.add_argument("--rate", action="append", default=[], metavar="MODALITY=HZ",
                       help="target inference rate per modality (defaults: vision/depth/thermal 5, audio 2, imu 2)")
    sched.add_argument("--audio-hop", type=float, metavar="S", help="seconds between 2-s audio windows")
    sched.add_argument("--weight", action="append", default=[], metavar="MODALITY=W", help="fusion weight")
    sched.add_argument("--staleness", type=float, default=1.0, metavar="S",
                       help="modalities older than S seconds leave the fused embedding (default 1.0)")
    sched.add_argument("--top-k", type=int, default=5)
    sched.add_argument("--enter", type=float, help="event hysteresis: enter threshold (probability); enables events")
    sched.add_argument("--exit", type=float, help="event hysteresis: exit threshold (default enter - 0.1)")
    sched.add_argument("--min-duration", type=float, default=0.0, metavar="S", help="event hysteresis: hold time")
    sched.add_argument("--mode", choices=["auto", "live", "deterministic"], default="auto")
    sched.add_argument("--depth-fx", type=float, help="depth focal length (px) when the source gives none")
    sched.add_argument("--depth-baseline", type=float, help="depth baseline (m) when the source gives none")
    eng = parser.add_argument_group("engines")
    eng.add_argument("--backend", default="auto", help="auto, tensorrt, onnxruntime, onnxruntime-cpu|cuda|tensorrt")
    eng.add_argument("--precision", default="auto", help="auto, fp32, fp16, int8, int8-qdq, int8-dynamic")
    eng.add_argument("--threads", type=int, help="ONNX Runtime threads per engine")
    eng.add_argument("--engines-root", default="engines", metavar="DIR",
                     help="engine cache folder (TensorRT plans, ORT optimised models); 'none' disables caching")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object per result on stdout (summary on stderr)")
    out.add_argument("--embeddings", choices=["none", "head", "full"], default="none",
                     help="include embeddings in --json output (head: first 8 values)")


def _specs(args: argparse.Namespace) -> tuple[str, ...]:
    specs = list(args.sources)
    if args.camera is not None:
        specs.append(f"camera:{args.camera}")
    if args.mic is not None:
        specs.append(f"mic:{args.mic}")
    if args.imu is not None:
        port, _, baud = args.imu.rpartition(":") if args.imu.rsplit(":", 1)[-1].isdigit() else (args.imu, "", "")
        specs.append(f"imu:{port}" + (f";baudrate={baud}" if baud else ""))
    if args.depth is not None:
        specs.append(f"depth:{args.depth}")
    if args.thermal is not None:
        specs.append(f"thermal:{args.thermal}")
    return tuple(specs)


def _line(result: Any) -> str:
    parts = [f"t={result.t:9.3f} {result.trigger:<8}"]
    for stream in ["fused", *sorted(k for k in result.top_k if k != "fused")]:
        if result.top_k.get(stream):
            label, score, prob = result.top_k[stream][0]
            parts.append(f"{stream}: {label} {score:+.3f} p={prob:.2f}")
    for e in result.events:
        parts.append(f"{'+' if e.kind == 'enter' else '-'}{e.label}[{e.stream}]")
    lat = result.latency_ms.get(result.trigger)
    if lat is not None:
        parts.append(f"{lat:.1f} ms")
    return " | ".join(parts)


def _random_weights(labels: str) -> bool:
    from ..labels import LabelBank

    return LabelBank.load(labels).weights.startswith("random-init")


def run(args: argparse.Namespace) -> int:
    from ..runtime.fusion import FusionConfig
    from ..runtime.pipeline import RunOptions, RuntimeConfig, run_runtime
    from ..runtime.recognition import HysteresisConfig
    from ..runtime.windows import WindowConfig

    replay, labels = args.replay, args.labels
    if args.demo:
        from ..runtime.demo_recording import prepare_demo

        replay, demo_labels = prepare_demo(args.bundle, args.demo)
        labels = labels or str(demo_labels)
    hysteresis = None
    if args.enter is not None:
        hysteresis = HysteresisConfig(enter=args.enter, exit=args.exit if args.exit is not None else args.enter - 0.1,
                                      min_duration_s=args.min_duration)
    config = RuntimeConfig(
        mode=args.mode, rates_hz=_pairs(args.rate, "--rate"), audio_hop_s=args.audio_hop,
        fusion=FusionConfig(weights=_pairs(args.weight, "--weight"), staleness_s=args.staleness),
        top_k=args.top_k, hysteresis=hysteresis,
        window=WindowConfig(depth_fx=args.depth_fx, depth_baseline=args.depth_baseline),
        backend=args.backend, precision=args.precision, threads=args.threads,
        engines_root=None if args.engines_root.lower() == "none" else args.engines_root,
    )
    options = RunOptions(bundle=args.bundle, sources=_specs(args), replay=replay, realtime=args.realtime,
                         labels=labels, record=args.record, duration_s=args.duration, runtime=config)
    top1: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def on_result(result: Any) -> None:
        for stream, ranked in result.top_k.items():
            if ranked:
                top1[stream][ranked[0][0]] += 1
        print(result.to_json(embeddings=args.embeddings) if args.json else _line(result), flush=True)

    summary = run_runtime(options, on_result)
    table = summary.pop("latency_table")
    report = sys.stderr if args.json else sys.stdout
    if top1:
        print("\nrecognised labels (top-1, share of results per stream):", file=report)
        for stream in sorted(top1, key=lambda s: (s != "fused", s)):
            total = sum(top1[stream].values())
            best = ", ".join(f"{label} {n / total:.0%}" for label, n in top1[stream].most_common(3))
            print(f"  {stream:<8} {best}", file=report)
    if labels and _random_weights(labels):
        print("NOTE: this bundle has random weights (--random-init): the pipeline runs end to end, "
              "but the labels above carry no meaning.", file=report)
    print(f"\n{summary['mode']} mode, {summary['metrics']['results']} results"
          f"{' (interrupted)' if summary['interrupted'] else ''}\n{table}", file=report)
    for name, h in summary["health"].items():
        if h.get("state") not in ("ok", "finished", "stopped") or h.get("errors"):
            print(f"source {name}: {h.get('state')} errors={h.get('errors')} last_error={h.get('last_error')}",
                  file=report)
    return 130 if summary["interrupted"] else 0
