"""End-to-end runtime on a recording replayed in real time: capture -> embedding latency per modality,
dropped windows, CPU usage and the runtime's own overhead (everything but engine execution).

    python benchmarks/stream.py export/imagebind_tiny [--recording PATH] [--seconds 20] [--precision int8]

Without ``--recording`` the demo recording (packaged samples, ``edgebind.runtime.demo_recording``) is
built in ``benchmarks/results/raw/recordings``. Writes ``stream.json`` / ``stream.md`` into ``--out``
(default ``benchmarks/results/<model>``; ``stream-<precision>`` when a precision is forced).
"""

from __future__ import annotations

import argparse
import sys

from common import RAW, RESULTS, done, setup_logging, write_outputs

from edgebind.bench.stream import StreamConfig, run_stream, stream_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--recording", help="recording folder or rosbag2/MCAP bag (default: the demo recording)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the demo recording (default 20)")
    parser.add_argument("--precision", default="auto", help="auto, fp32, fp16, int8, int8-qdq, int8-dynamic")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads per engine (default: ORT's)")
    parser.add_argument("--no-labels", action="store_true", help="skip zero-shot recognition (label bank)")
    parser.add_argument("--modalities", help="comma-separated streams to replay (default: all with a tower)")
    parser.add_argument("--name", default=None, help="result file name (default: stream or stream-<precision>)")
    parser.add_argument("--workdir", help="where the demo recording is built "
                        "(default: benchmarks/results/raw/recordings)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<model>)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    config = StreamConfig(bundle=args.bundle, recording=args.recording, demo_seconds=args.seconds,
                          workdir=args.workdir or str(RAW / "recordings"), precision=args.precision,
                          backend=args.backend, threads=args.threads, labels=not args.no_labels,
                          modalities=tuple(args.modalities.split(",")) if args.modalities else None)
    result = run_stream(config)
    name = args.name or ("stream" if args.precision == "auto" else f"stream-{args.precision}")
    done(write_outputs(args.out or RESULTS / result["model"], name, result, stream_markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
