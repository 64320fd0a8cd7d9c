"""``edgebind info``: this device's runtimes, GPU, L4T release, memory and the engine caches."""

from __future__ import annotations

import argparse
import json

HELP = "show ONNX Runtime / TensorRT / GPU / L4T / memory facts and which cached engines are valid or stale"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", default="engines", metavar="DIR", help="engine cache folder (default: engines)")
    parser.add_argument("--bundle", default=None, help="also check cached TensorRT plans against this bundle's ONNX files")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")


def _line(name: str, facts: dict) -> str:
    if not facts.get("available", True):
        return f"{name:13s} absent ({facts.get('reason')})"
    shown = {k: v for k, v in facts.items() if k != "available" and v is not None}
    return f"{name:13s} " + ", ".join(f"{k}={v}" for k, v in shown.items())


def run(args: argparse.Namespace) -> int:
    from ..engines.environment import describe

    facts = describe(args.engines, bundle_dir=args.bundle)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"edgebind {facts['edgebind']}, Python {facts['python']}, {facts['platform']['system']} "
          f"{facts['platform']['machine']}")
    for name in ("onnxruntime", "tensorrt", "cuda_python", "gpu", "l4t", "memory"):
        print(_line(name, facts[name]))
    caches = facts["caches"]
    if not caches["exists"]:
        print(f"engine caches: none ({caches['root']} does not exist)")
        return 0
    print(f"engine caches in {caches['root']}:")
    for kind in ("tensorrt", "onnxruntime"):
        for row in caches[kind]:
            where = row.get("plan") or row.get("folder")
            why = "" if row["status"] == "valid" else f" ({'; '.join(row.get('reasons', []))})"
            print(f"  {kind:11s} {row['status']:7s} {where}{why}")
        if not caches[kind]:
            print(f"  {kind:11s} none")
    return 0
