"""Per-tower latency of every backend and precision of a bundle, measured side by side.

For each tower (one in memory at a time) and each batch size, all available backends are timed
interleaved (``edgebind.bench.timing``) on the same deterministic input, so their ratios hold on a
noisy machine. Every configuration runs in a worker process of its own (``edgebind.bench.worker``:
thread pools of different runtimes do not fight, and memory figures do not mix). Each result row
has p50/p90/p99 latency, throughput, model size, the worker's peak resident memory, counted FLOPs
(``edgebind.bench.flops``), the achieved fraction of the machine's attainable matmul rate
(``edgebind.bench.peak``) and the artifact's recorded fidelity. Backends that cannot run here are
listed with the reason. ``run_latency`` is what ``edgebind bench`` and ``benchmarks/latency.py`` call.

Fractions of peak (when ``rates`` are given):

- ``fraction_of_peak`` = counted GFLOPs x batch / p50 / attainable rate of the form's precision
  (INT8 rate for int8 forms, else FP32);
- ``fraction_of_roofline`` = the time the counted work would take at the attainable rates (INT8
  kernels at the INT8 rate, matmuls that stay float at the FP32 rate) / p50. It tells how much of
  an INT8 tower's gap to the INT8 rate is float work left in the graph rather than slow kernels.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from .._config import ConfigMixin
from ..bundle.manifest import Manifest, load_manifest
from ..bundle.schema import RANDOM_INIT
from ..errors import ConfigError, EdgebindError
from ..modality import Modality
from .environment import environment_record
from .runners import BACKENDS, BASELINE, backend_spec, make_input, peak_key, unavailable_reason
from .timing import StopPolicy, interleave, summarize

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_BACKENDS = tuple(BACKENDS)
ORT_FP32 = "ort-cpu-fp32"


@dataclasses.dataclass(frozen=True)
class LatencyConfig(ConfigMixin):
    """What ``run_latency`` measures. Empty ``modalities`` = every tower of the bundle."""

    bundle: str
    modalities: tuple[str, ...] = ()
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    batch_sizes: tuple[int, ...] = (1, 8)
    threads: int = 2
    policy: StopPolicy = StopPolicy()
    flops: bool = True
    profile: bool = False
    engines_root: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in self.backends:
            backend_spec(name)
        if not self.backends:
            raise ConfigError(f"LatencyConfig.backends: expected one or more of {list(BACKENDS)}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"LatencyConfig.batch_sizes: expected positive ints, got {list(self.batch_sizes)}")
        if self.threads < 1:
            raise ConfigError(f"LatencyConfig.threads: expected >= 1, got {self.threads}")
        object.__setattr__(self, "modalities", tuple(m.value for m in Modality.parse_list(list(self.modalities)))
                           if self.modalities else ())


def _fidelity(manifest: Manifest, tower: str, name: str) -> dict[str, Any] | None:
    spec = backend_spec(name)
    if spec.kind == "torch":
        return None
    art = manifest.artifact(tower, spec.precision, spec.form)
    if art.fidelity is None:
        return None
    from .fidelity import artifact_threshold

    threshold = artifact_threshold(art)
    return {"mean_cosine": art.fidelity.mean_cosine, "min_cosine": art.fidelity.min_cosine,
            "top1_agreement": art.fidelity.top1_agreement, "n_samples": art.fidelity.n_samples,
            "reference": art.fidelity.reference, "min_mean_cosine": threshold}


def _flops_for(bundle: Path, manifest: Manifest, tower: str, forms: set[str]) -> dict[str, Any]:
    from .flops import count_flops

    out: dict[str, Any] = {}
    for form in sorted(forms):
        art = next(a for a in manifest.tower(tower).artifacts if a.form == form)
        try:
            out[form] = count_flops(bundle / art.file)
        except EdgebindError as exc:
            out[form] = {"error": str(exc)}
    return out


def _peak_fields(row: dict[str, Any], flops: Mapping[str, Any] | None, rates: Mapping[str, float] | None) -> None:
    row.update(gflops_per_sample=None, achieved_gops=None, peak_key=peak_key(row["backend"]),
               fraction_of_peak=None, fraction_of_roofline=None)
    if not flops or "total_gflops" not in flops:
        return
    seconds = row["p50_ms"] / 1000.0
    gflops = flops["total_gflops"] * row["batch"]
    row["gflops_per_sample"] = flops["total_gflops"]
    row["achieved_gops"] = gflops / seconds
    if not rates:
        return
    rate = rates.get(row["peak_key"])
    if rate:
        row["fraction_of_peak"] = row["achieved_gops"] / rate
    int8 = flops["by_precision"].get("int8", 0.0) * row["batch"]
    other = gflops - int8
    if rates.get("fp32") and (int8 == 0 or rates.get("int8")):
        ideal = other / rates["fp32"] + (int8 / rates["int8"] if int8 else 0.0)
        if row["peak_key"] in ("fp32", "int8"):
            row["fraction_of_roofline"] = ideal / seconds


def _speedups(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["tower"], r["batch"], r["backend"]): r for r in rows if r.get("status") == "ok"}
    for row in rows:
        if row.get("status") != "ok":
            continue
        for ref, field in ((BASELINE, "speedup_vs_torch"), (ORT_FP32, "speedup_vs_ort_fp32")):
            base = by_key.get((row["tower"], row["batch"], ref))
            row[field] = base["p50_ms"] / row["p50_ms"] if base else None


def _measure_group(config: LatencyConfig, bundle: Path, manifest: Manifest, tower: str, batch: int,
                   names: list[str], progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Time ``names`` on one (tower, batch), one worker process each, interleaved; then their peak RSS."""
    from .worker import Worker

    rows: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    try:
        for name in names:
            spec_b = backend_spec(name)
            rows[name] = {"tower": tower, "backend": name, "kind": spec_b.kind, "precision": spec_b.precision,
                          "form": spec_b.form, "batch": batch, "threads": config.threads}
            progress(f"{tower} batch {batch}: opening {name}")
            try:
                workers[name] = Worker({"bundle": str(bundle), "backend": name, "modality": tower, "batch": batch,
                                        "threads": config.threads, "engines_root": config.engines_root,
                                        "seed": config.seed})
            except EdgebindError as exc:
                rows[name].update(status="error", error=str(exc))
                continue
            info = {k: v for k, v in workers[name].info.items() if k not in ("baseline_mib", "after_load_mib")}
            rows[name].update(info)
        if workers:
            progress(f"{tower} batch {batch}: timing {', '.join(workers)} interleaved")
            timed = interleave({n: w.run for n, w in workers.items()}, config.policy)
            for name, entry in timed.items():
                if "error" in entry or not entry["times_ms"]:
                    rows[name].update(status="error", error=entry.get("error", "no runs"))
                    continue
                stats = summarize(entry["times_ms"])
                rows[name].update(status="ok", **stats, stable=entry["stable"], stop=entry["stop"],
                                  throughput_per_s=batch * 1000.0 / stats["p50_ms"], raw_times_ms=entry["times_ms"])
        for name, worker in workers.items():
            try:
                rows[name]["memory"] = worker.finish()
            except EdgebindError as exc:
                rows[name]["memory"] = {"error": str(exc)}
    finally:
        for worker in workers.values():
            worker.kill()
    return [rows[n] for n in names]


def _profiles(config: LatencyConfig, bundle: Path, manifest: Manifest, tower: str, names: list[str]) -> dict[str, Any]:
    from .profile import profile_onnx

    out = {}
    spec = manifest.tower(tower).input
    data = make_input(spec, 1, seed=config.seed, vocab_size=int(manifest.model_config.get("text_vocab_size", 49408)))
    for name in names:
        bspec = backend_spec(name)
        if bspec.kind != "onnxruntime" or bspec.provider != "cpu":
            continue
        art = manifest.artifact(tower, bspec.precision, bspec.form)
        out[bspec.form] = profile_onnx(bundle / art.file, {spec.name: data}, threads=config.threads,
                                       runs=max(3, min(10, config.policy.min_iterations)))
        out[bspec.form]["nodes_kept_float"] = art.quantization.get("nodes_kept_float") or art.quantization.get(
            "nodes_excluded") or []
    return out


def run_latency(config: LatencyConfig, *, rates: Mapping[str, float] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every (tower, backend, batch) of ``config``; returns the JSON-ready result (see module doc).

    ``rates`` are attainable matmul rates ``{"fp32": GFLOP/s, "int8": GOP/s}`` from
    ``edgebind.bench.peak.measure_peak``; without them the fractions of peak are None.
    """
    say = progress or (lambda msg: logger.info("%s", msg))
    bundle = Path(config.bundle)
    manifest = load_manifest(bundle)
    towers = list(config.modalities) or list(manifest.towers)
    for tower in towers:
        manifest.tower(tower)  # ManifestError naming the bundle's towers
    result: dict[str, Any] = {
        "kind": "latency", "schema_version": SCHEMA_VERSION, "bundle": str(bundle), "model": manifest.model,
        "weights": "random-init" if manifest.checkpoint_sha256 == RANDOM_INIT else "checkpoint",
        "config": config.to_dict(), "environment": environment_record(threads=config.threads),
        "rates": dict(rates) if rates else None, "towers": {}, "results": [],
    }
    for tower in towers:
        available, unavailable = [], {}
        for name in config.backends:
            reason = unavailable_reason(name, manifest, tower)
            if reason is None:
                available.append(name)
            else:
                unavailable[name] = reason
        info: dict[str, Any] = {"unavailable": unavailable, "backends": available}
        forms = {backend_spec(n).form for n in available}
        flops = _flops_for(bundle, manifest, tower, forms) if config.flops and forms else {}
        info["flops"] = flops
        rows = [row for batch in config.batch_sizes if available
                for row in _measure_group(config, bundle, manifest, tower, batch, available, say)]
        for row in rows:
            row["fidelity"] = _fidelity(manifest, tower, row["backend"])
            if row["status"] == "ok":
                _peak_fields(row, flops.get(row["form"]), rates)
        if config.profile:
            say(f"{tower}: ORT profiles of the CPU forms")
            info["profiles"] = _profiles(config, bundle, manifest, tower, available)
        for name, reason in unavailable.items():
            spec = backend_spec(name)
            rows += [{"tower": tower, "backend": name, "kind": spec.kind, "precision": spec.precision,
                      "form": spec.form, "batch": b, "status": "unavailable", "reason": reason}
                     for b in config.batch_sizes]
        result["towers"][tower] = info
        result["results"].extend(rows)
    _speedups(result["results"])
    return result


def strip_raw(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result without per-iteration times, {row key: times}) so the committed JSON stays small."""
    raw: dict[str, Any] = {}
    rows = []
    for row in result["results"]:
        row = dict(row)
        times = row.pop("raw_times_ms", None)
        if times is not None:
            raw[f"{row['tower']}/{row['backend']}/b{row['batch']}"] = times
        rows.append(row)
    return {**result, "results": rows}, raw
