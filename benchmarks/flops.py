"""FLOPs per sample of every tower and form of a bundle, counted from the ONNX graphs (MatMul/Gemm/Conv).

    python benchmarks/flops.py export/imagebind_huge

For imagebind_huge the linear + conv figures are checked against imagebind.md (vision 324, text 46.5,
audio 39.0, thermal 33.5, depth 8.4, IMU 9.5 GFLOPs; 3 % tolerance) and the script exits 1 on a miss.
Writes ``flops.json`` / ``flops.md`` into ``--out`` (default ``benchmarks/results/<model>``).
"""

from __future__ import annotations

import argparse
import sys

from common import RESULTS, done, setup_logging, write_outputs

from edgebind.bench.flops import check_against_reference, tower_flops
from edgebind.bench.report import flops_markdown
from edgebind.bundle.manifest import load_manifest


def flops_result(bundle: str) -> dict:
    manifest = load_manifest(bundle)
    towers = tower_flops(bundle)
    result = {"kind": "flops", "schema_version": 1, "bundle": bundle, "model": manifest.model, "towers": towers,
              "check": {}}
    if manifest.model == "imagebind_huge":
        counted = {t: forms["fp32"]["reference_gflops"] for t, forms in towers.items() if "fp32" in forms}
        result["check"] = check_against_reference(counted)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<model>)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    result = flops_result(args.bundle)
    done(write_outputs(args.out or RESULTS / result["model"], "flops", result, flops_markdown(result)))
    return 0 if all(c["ok"] for c in result["check"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
