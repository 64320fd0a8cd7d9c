"""``edgebind demo``: embed real packaged sample data in all six modalities and rank it against text labels."""

from __future__ import annotations

import argparse
import json

HELP = "embed packaged sample data (image, depth, thermal, IMU, audio) and match it against text labels, offline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="imagebind_tiny", help="registered model name (default: imagebind_tiny)")
    parser.add_argument("--checkpoint", help="official checkpoint (e.g. from `edgebind download`); default: random init")
    parser.add_argument("--labels", nargs="+", help="text labels to match against (default: a built-in list)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="random-init seed when no checkpoint is given")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    from ..demo import DEFAULT_LABELS, run_demo

    result = run_demo(
        args.model, checkpoint=args.checkpoint, labels=tuple(args.labels or DEFAULT_LABELS), top_k=args.top_k, seed=args.seed
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"model {result.model}, weights {result.weights}")
    if result.weights.startswith("random-init"):
        print("NOTE: random weights -- the pipeline runs end to end, but the similarities below carry no meaning.")
    print()
    print(f"{'input':28s} {'modality':8s} {'source':10s} {'norm':>6s}  embedding[:4]                      top label (p)")
    for it in result.items:
        head = " ".join(f"{v:+.3f}" for v in it.embedding[:4])
        label, p = it.top_labels[0]
        kind = it.provenance.get("kind", "real")
        print(f"{it.name[:28]:28s} {it.modality:8s} {kind:10s} {float((it.embedding ** 2).sum()) ** 0.5:6.3f}  {head:34s} {label} ({p:.2f})")
    print()
    print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items()))
    return 0
