"""Regenerate every benchmark table and plot under ``benchmarks/results/`` and the results section of
``benchmarks/README.md``, in one command:

    python benchmarks/run_all.py --huge-bundle /tmp/huge/export/imagebind_huge   # reuse an export
    python benchmarks/run_all.py --export-huge                                   # export it (and measure its memory)
    python benchmarks/run_all.py --quick                                          # smoke run, tiny model only

Steps: attainable matmul rate (peak) -> for the tiny bundle (exported into the work folder when not
given) and the huge one (random weights: timing needs no trained weights): FLOPs, latency of every
backend/precision interleaved (with ORT profiles for the target analysis), real-time stream ->
fidelity table of both plus the MiniLM check -> export peak memory (huge, when this run exported it)
-> README section. Run it on a quiet machine: everything else on the CPU shows up in the timings
(the load average is recorded in every result).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from common import BENCH_DIR, RESULTS, add_common_arguments, policy_from, say, setup_logging, write_outputs

from edgebind.bench.environment import environment_record, machine_class
from edgebind.bench.memory import export_peak_rss
from edgebind.bench.report import fmt, peak_markdown, table, targets_markdown

README = BENCH_DIR / "README.md"
BEGIN, END = "<!-- results:begin (benchmarks/run_all.py) -->", "<!-- results:end -->"
EXPORT_MEMORY_FACTOR = 1.5
ALL_TOWERS = "vision,text,audio,depth,thermal,imu"
# The lanes a 2-core CPU can run in real time at imagebind_huge INT8: vision alone needs ~0.5 s per frame.
SUSTAINABLE_STREAMS = ("depth", "imu", "audio", "thermal")


def _export(model: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``edgebind export`` in a child process (so its peak RSS is its own); returns the memory record."""
    # Calibration data: the default set (packaged samples) in ./calibration/default, built there if absent.
    argv = ["--model", model, "--random-init", "--modalities", args.huge_modalities if model == "imagebind_huge"
            else ALL_TOWERS, "--precision", "fp32", "fp16", "int8", "--out", str(out), "--threads", str(args.threads)]
    say(f"exporting {model} into {out} (child process, peak memory measured)")
    record = export_peak_rss(argv)
    record["argv"] = argv
    return record


def _export_memory_check(bundle: Path, record: dict[str, Any]) -> dict[str, Any]:
    from edgebind.bundle.manifest import load_manifest

    manifest = load_manifest(bundle)
    sizes = {t: next(a for a in tower.artifacts if a.form == "fp32") for t, tower in manifest.towers.items()}
    tower, art = max(sizes.items(), key=lambda kv: kv[1].size_bytes + (kv[1].data_size_bytes or 0))
    onnx_mib = (art.size_bytes + (art.data_size_bytes or 0)) / 2**20
    weights_mib = onnx_mib  # an FP32 ONNX file is its weights plus a small graph; counted once each below
    bound = EXPORT_MEMORY_FACTOR * (weights_mib + onnx_mib)
    return {**record, "largest_tower": tower, "fp32_weights_mib": weights_mib, "onnx_file_mib": onnx_mib,
            "bound_mib": bound, "ratio_to_weights_plus_onnx": record["peak_mib"] / (weights_mib + onnx_mib),
            "meets_target": record["peak_mib"] <= bound,
            "target": f"peak RSS <= {EXPORT_MEMORY_FACTOR} x (largest tower's FP32 weights + its ONNX file)"}


def _bundle(model: str, given: str | None, export: bool, args: argparse.Namespace) -> tuple[Path | None, dict | None]:
    if given:
        return Path(given), None
    out = args.results / "raw" / "work" / "export" / model
    if (out / "manifest.json").is_file() and not export:
        return out, None
    if model == "imagebind_huge" and not export:
        return None, None
    return out, _export(model, out, args)


def _run_model(bundle: Path, rates: dict[str, float] | None, args: argparse.Namespace) -> dict[str, Any]:
    from flops import flops_result

    from edgebind.bench.latency import LatencyConfig
    from edgebind.bench.report import flops_markdown
    from edgebind.bench.stream import StreamConfig, run_stream, stream_markdown
    from edgebind.bench.suite import BenchOptions, run_bench, write_bench_outputs

    flops = flops_result(str(bundle))
    model = flops["model"]
    out = args.results / model
    write_outputs(out, "flops", flops, flops_markdown(flops))
    summary: dict[str, Any] = {"model": model, "bundle": str(bundle), "flops_check": flops["check"]}
    if "latency" not in args.skip:
        latency = LatencyConfig(bundle=str(bundle), threads=args.threads, policy=policy_from(args), profile=True)
        result = run_bench(BenchOptions(latency=latency, rates=rates), progress=say)
        write_bench_outputs(result, out, raw_dir=args.results / "raw" / model)
        summary["targets"] = result["targets"]
    if "stream" not in args.skip:
        stream = run_stream(StreamConfig(bundle=str(bundle), demo_seconds=5.0 if args.quick else args.stream_seconds,
                                         workdir=str(args.results / "raw" / "recordings")))
        write_outputs(out, "stream", stream, stream_markdown(stream))
        summary["stream"] = _stream_summary(stream)
        if model == "imagebind_huge":
            subset = run_stream(StreamConfig(bundle=str(bundle), demo_seconds=args.stream_seconds,
                                             workdir=str(args.results / "raw" / "recordings"),
                                             modalities=SUSTAINABLE_STREAMS))
            write_outputs(out, "stream-no-vision", subset, stream_markdown(subset))
            summary["stream_no_vision"] = _stream_summary(subset)
    return summary


def _stream_summary(stream: dict[str, Any]) -> dict[str, Any]:
    keys = ("modality", "latency_p50_ms", "latency_p99_ms", "dropped", "overhead_fraction")
    return {"overhead": stream["overhead"], "cpu": stream["cpu"],
            "modalities": [{k: r[k] for k in keys} for r in stream["modalities"]]}


def _readme_section(env: dict[str, Any], peak: dict | None, models: list[dict[str, Any]], fidelity: dict | None,
                    memory: dict | None, args: argparse.Namespace) -> str:
    lines = [BEGIN, "", f"Generated by `python benchmarks/run_all.py {' '.join(args.argv)}`".rstrip() + " on "
             f"{machine_class(env)} ({env.get('created_utc')}; load average at start "
             f"{(env.get('load_average') or ['?'])[0]}).", ""]
    if args.quick:
        lines += ["**Smoke run (`--quick`): a few iterations each; these numbers are not stable and must not "
                  "be quoted.**", ""]
    if peak is not None:
        lines += [peak_markdown(peak), ""]
    for m in models:
        lines += [f"#### {m['model']}", "", f"Full tables: [`results/{m['model']}/latency.md`](results/{m['model']}/"
                  f"latency.md), [`flops.md`](results/{m['model']}/flops.md), [`stream.md`](results/{m['model']}/"
                  f"stream.md); plots `latency.png`, `fraction_of_peak.png`.", ""]
        if m.get("flops_check"):
            rows = [[t, fmt(c["counted"], ".2f"), fmt(c["reference"], ".1f"), fmt(c["rel_error"], "+.1f", 100) + "%",
                     "ok" if c["ok"] else "MISS"] for t, c in m["flops_check"].items()]
            lines += ["FLOPs (linear + conv, counted from the ONNX graph) against imagebind.md:", "",
                      table(["tower", "GFLOPs counted", "imagebind.md", "error", ""], rows), ""]
        if m.get("targets"):
            lines += [targets_markdown(m["targets"]), ""]
        for key, title in (("stream", "Stream (demo recording replayed in real time)"),
                           ("stream_no_vision", "Stream without the vision lane (`stream-no-vision.md`)")):
            if not m.get(key):
                continue
            s = m[key]
            rows = [[r["modality"], fmt(r["latency_p50_ms"]), fmt(r["latency_p99_ms"]), r["dropped"],
                     fmt(r["overhead_fraction"], ".1f", 100)] for r in s["modalities"]]
            lines += [f"{title}:", "",
                      table(["modality", "latency p50 ms", "p99 ms", "dropped", "overhead %"], rows), "",
                      f"Process CPU {fmt(s['cpu']['cores_used'])} cores; worst overhead "
                      f"{fmt(s['overhead']['max_fraction'], '.1f', 100)}% (target < 5%).", ""]
    if fidelity is not None:
        rows = [[r["model"], r["tower"], r["form"], fmt(r.get("mean_cosine"), ".5f"), fmt(r.get("meets_threshold"))]
                for r in fidelity["rows"] if r["form"] != "fp16" or r["model"] == "imagebind_huge"]
        lines += ["#### Fidelity (INT8 rows and huge FP16; all rows in [`results/fidelity.md`](results/fidelity.md))",
                  "", table(["model", "tower", "form", "mean cos vs FP32", "meets threshold"], rows), ""]
        mini = fidelity.get("minilm") or {}
        if "forms" in mini:
            lines += ["MiniLM (real weights): " + ", ".join(f"{f} mean cos {fmt(v['mean_cosine'], '.5f')}"
                                                         for f, v in mini["forms"].items()) + ".", ""]
    if memory is not None:
        m = memory
        lines += [f"Export peak memory ({m.get('model', 'imagebind_huge')}): {fmt(m['peak_mib'], '.0f')} MiB "
                  f"= {fmt(m['ratio_to_weights_plus_onnx'])} x (largest tower {m['largest_tower']}: FP32 weights "
                  f"{fmt(m['fp32_weights_mib'], '.0f')} MiB + ONNX file {fmt(m['onnx_file_mib'], '.0f')} MiB); "
                  f"target <= {EXPORT_MEMORY_FACTOR} x: {'met' if m['meets_target'] else 'MISSED'}."
                  + (" (From the last `--export-huge` run, `results/export_memory.json`; not re-measured in this one.)"
                     if m.get("from_earlier_run") else ""), ""]
    lines.append(END)
    return "\n".join(lines)


def _update_readme(section: str) -> None:
    text = README.read_text(encoding="utf-8") if README.is_file() else "# benchmarks/\n"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    from edgebind._io import atomic_open

    with atomic_open(README, "w") as fh:
        fh.write(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-bundle", help="an imagebind_tiny bundle (default: export one into results/raw/work)")
    parser.add_argument("--huge-bundle", help="an existing imagebind_huge bundle (random-init is fine)")
    parser.add_argument("--export-huge", action="store_true", help="export imagebind_huge (and measure export memory)")
    parser.add_argument("--huge-modalities", default=ALL_TOWERS, help="towers to export with --export-huge")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: peak,latency,stream,fidelity,minilm")
    parser.add_argument("--stream-seconds", type=float, default=20.0)
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="results folder (default benchmarks/results; the README is updated only for that one)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = argv
    args.skip = {s for s in args.skip.split(",") if s}
    setup_logging(args.verbose - args.quiet)
    started = time.time()
    env = environment_record(threads=args.threads)
    peak = None
    if "peak" not in args.skip:
        import peak as peak_script

        quick = ["--quick"] if args.quick else []
        peak_script.main(["--out", str(args.results), "--threads", str(args.threads), *quick])
        peak = json.loads((args.results / "peak.json").read_text())
    rates = None if peak is None else peak["attainable"]
    memory = None
    models = []
    bundles = []
    for model, given, export in (("imagebind_tiny", args.tiny_bundle, False),
                                 ("imagebind_huge", None if args.quick else args.huge_bundle, args.export_huge)):
        bundle, record = _bundle(model, given, export, args)
        if bundle is None:
            say(f"{model}: no bundle (pass --huge-bundle PATH or --export-huge); skipped")
            continue
        if record is not None and model == "imagebind_huge":
            memory = {"model": model, **_export_memory_check(bundle, record),
                      "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_outputs(args.results, "export_memory", memory, f"Export peak memory: {json.dumps(memory, indent=1)}")
        bundles.append(str(bundle))
        models.append(_run_model(bundle, rates, args))
    if memory is None and (args.results / "export_memory.json").is_file():
        # Not re-exported this run: show the last --export-huge measurement, marked as such.
        memory = {**json.loads((args.results / "export_memory.json").read_text()), "from_earlier_run": True}
    fidelity = None
    if "fidelity" not in args.skip and bundles:
        import fidelity as fidelity_script

        no_minilm = ["--no-minilm"] if "minilm" in args.skip or args.quick else []
        fid_args = [*bundles, "--out", str(args.results), *no_minilm]
        fidelity_script.main(fid_args)
        fidelity = json.loads((args.results / "fidelity.json").read_text())
    if not args.no_readme and args.results.resolve() == RESULTS.resolve():
        _update_readme(_readme_section(env, peak, models, fidelity, memory, args))
    say(f"all benchmarks done in {(time.time() - started) / 60:.1f} min; results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
