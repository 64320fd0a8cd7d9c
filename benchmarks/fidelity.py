"""The fidelity table: FP16 and INT8 against FP32 per tower (from the bundle manifests), and the MiniLM
real-weights check (all-MiniLM-L6-v2 through the same FP16 / INT8 paths).

    python benchmarks/fidelity.py export/imagebind_tiny [export/imagebind_huge] [--recompute --calibration DIR]

Reads the fidelity records the export measured; ``--recompute`` measures them again on a
calibration set's validation split. ``--no-minilm`` skips the MiniLM check (about a minute).
Writes ``fidelity.json`` / ``fidelity.md`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from common import BENCH_DIR, RESULTS, done, say, setup_logging, write_outputs

from edgebind.bench.fidelity import fidelity_markdown, fidelity_table
from edgebind.bench.minilm import build_minilm, minilm_fidelity, minilm_unavailable_reason

SENTENCES = BENCH_DIR.parent / "tests" / "data" / "quantize_sentences.txt"


def minilm_check() -> dict:
    reason = minilm_unavailable_reason()
    if reason is not None:
        say(f"MiniLM check skipped: {reason}")
        return {"skipped": reason}
    if not SENTENCES.is_file():
        return {"skipped": f"{SENTENCES} not found (run from a source checkout)"}
    with tempfile.TemporaryDirectory(prefix="edgebind-minilm-") as tmp:
        setup = build_minilm(tmp, SENTENCES)
        return minilm_fidelity(setup, tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="bundle folders")
    parser.add_argument("--recompute", action="store_true", help="measure again instead of reading the manifests")
    parser.add_argument("--calibration", help="calibration set folder for --recompute")
    parser.add_argument("--no-minilm", action="store_true", help="skip the MiniLM real-weights check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="results folder (default: benchmarks/results)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    result = fidelity_table(args.bundles, recompute=args.recompute, calibration=args.calibration,
                            threads=args.threads)
    result["minilm"] = {"skipped": "--no-minilm"} if args.no_minilm else minilm_check()
    done(write_outputs(args.out or RESULTS, "fidelity", result, fidelity_markdown(result, result["minilm"])))
    missed = [f"{r['model']}/{r['tower']}/{r['form']}" for r in result["rows"] if r.get("meets_threshold") is False]
    if missed:
        say(f"below threshold: {', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
