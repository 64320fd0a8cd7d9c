"""The fidelity table: FP16 and INT8 artifacts against FP32, per tower, from the bundle manifests.

By default the figures are read from each artifact's recorded ``fidelity`` (measured by the export
on the calibration set's validation split) and nothing is recomputed; ``recompute=True`` measures
them again on a calibration set's validation split with the same functions the export uses
(``edgebind.quantize.fidelity_of`` / ``fp16_fidelity``). The threshold each artifact had to meet
comes from its provenance (``min_mean_cosine`` of the recipe).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..bundle.manifest import Artifact, load_manifest
from ..errors import ConfigError
from .environment import environment_record

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = {"fp16": 0.999, "int8": 0.99}


def artifact_threshold(art: Artifact) -> float | None:
    """The mean-cosine threshold the export held ``art`` to (None for FP32)."""
    recipe = art.provenance.get("recipe") or {}
    if art.precision == "fp16":
        value = recipe.get("min_mean_cosine")
    elif art.precision == "int8":
        value = (recipe.get("int8") or {}).get("min_mean_cosine")
    else:
        return None
    return float(value) if value is not None else DEFAULT_THRESHOLDS.get(art.precision)


def _recompute(bundle: Path, fp32: Artifact, art: Artifact, feeds: Any, threads: int) -> dict[str, float]:
    from ..quantize import fidelity_of, fp16_fidelity

    batches = [feeds[i:i + 4] for i in range(0, len(feeds), 4)]
    if art.precision == "fp16":
        return fp16_fidelity(bundle / fp32.file, bundle / art.file, batches, threads=threads)
    return fidelity_of(bundle / fp32.file, bundle / art.file, batches, threads=threads)


def fidelity_table(bundles: Sequence[str | os.PathLike[str]], *, recompute: bool = False,
                   calibration: str | os.PathLike[str] | None = None, modalities: Iterable[str] | None = None,
                   threads: int = 2) -> dict[str, Any]:
    """Rows ``{model, tower, form, precision, mean_cosine, min_cosine, max_abs_diff, top1_agreement,
    n_samples, reference, threshold, meets_threshold, source}`` for every non-FP32 artifact.

    ``recompute`` needs ``calibration`` (a calibration set folder with the towers' validation data).
    """
    if recompute and calibration is None:
        raise ConfigError("fidelity_table(recompute=True) needs calibration= a calibration set folder "
                          "(e.g. calibration/default written by `edgebind export`)")
    calib = None
    if recompute:
        from ..calibration import CalibrationSet

        calib = CalibrationSet.open(calibration)  # type: ignore[arg-type]
    wanted = set(modalities) if modalities is not None else None
    rows: list[dict[str, Any]] = []
    for bundle_dir in bundles:
        bundle = Path(bundle_dir)
        manifest = load_manifest(bundle)
        for tower_name, tower in manifest.towers.items():
            if wanted is not None and tower_name not in wanted:
                continue
            fp32 = next((a for a in tower.artifacts if a.form == "fp32"), None)
            for art in tower.artifacts:
                if art.form == "fp32":
                    continue
                row: dict[str, Any] = {"model": manifest.model, "bundle": str(bundle), "tower": tower_name,
                                       "form": art.form, "precision": art.precision,
                                       "threshold": artifact_threshold(art)}
                if recompute and fp32 is not None and calib is not None:
                    fid = _recompute(bundle, fp32, art, calib.val(tower_name), threads)
                    row.update(fid, n_samples=int(len(calib.val(tower_name))),
                               reference=f"onnxruntime-fp32 on {calib.path} val (recomputed)", source="recomputed")
                elif art.fidelity is not None:
                    f = art.fidelity
                    row.update(mean_cosine=f.mean_cosine, min_cosine=f.min_cosine, max_abs_diff=f.max_abs_diff,
                               top1_agreement=f.top1_agreement, n_samples=f.n_samples, reference=f.reference,
                               source="manifest")
                else:
                    row.update(source="none recorded")
                cos, thr = row.get("mean_cosine"), row["threshold"]
                row["meets_threshold"] = None if cos is None or thr is None else bool(cos >= thr)
                row["weights"] = "random-init" if manifest.checkpoint_sha256 == "random-init" else "checkpoint"
                rows.append(row)
    return {"kind": "fidelity", "schema_version": 1, "environment": environment_record(threads=threads, gpu=False),
            "rows": rows}


def fidelity_markdown(result: dict[str, Any], minilm: dict[str, Any] | None = None) -> str:
    """The per-tower table, plus the MiniLM real-weights table when given."""
    from .report import fmt, table

    headers = ["model", "tower", "form", "mean cos", "min cos", "max |diff|", "top-1 agr.", "n", "threshold", "ok",
               "source"]
    rows = [[r["model"], r["tower"], r["form"], fmt(r.get("mean_cosine"), ".5f"), fmt(r.get("min_cosine"), ".5f"),
             fmt(r.get("max_abs_diff"), ".2e"), fmt(r.get("top1_agreement"), ".2f"), r.get("n_samples", "-"),
             fmt(r.get("threshold"), ".3f"), fmt(r.get("meets_threshold")), r.get("source")] for r in result["rows"]]
    out = ["### Fidelity against FP32 (per tower)", "", table(headers, rows), "",
           "FP16 is measured through a rounding FP32 twin (ONNX Runtime's CPU EP computes most FP16 nodes in FP32); "
           "INT8 Q/DQ includes the accuracy-aware fallback. Random-init towers lack the activation outliers of "
           "trained weights, hence the MiniLM check below.", ""]
    if minilm is not None:
        if "skipped" in minilm:
            out += [f"MiniLM real-weights check not run: {minilm['skipped']}", ""]
        else:
            mrows = []
            for form, fid in minilm["forms"].items():
                extra = ""
                if form == "int8-qdq":
                    extra = (f"first round mean cos {fmt(fid['first_round']['mean_cosine'], '.5f')}; "
                             f"{len(fid['nodes_returned_to_float'])} nodes returned to float")
                elif form == "fp16":
                    extra = f"{fid.get('fp32_nodes_for_range', 0)} overflow-prone nodes kept FP32"
                mrows.append([form, fmt(fid["mean_cosine"], ".5f"), fmt(fid["min_cosine"], ".5f"),
                              fmt(fid["top1_agreement"], ".3f"), extra])
            out += [f"### Real weights: {minilm['model']}, {minilm['n_validation']} validation sentences", "",
                    table(["form", "mean cos", "min cos", "top-1 agr.", "notes"], mrows), "",
                    f"ONNX FP32 vs PyTorch max |diff| {fmt(minilm['onnx_vs_torch_max_abs'], '.1e')}; FP32 "
                    f"same-topic nearest neighbour {fmt(minilm['topic_retrieval_fp32'], '.1f', 100)}%.", ""]
    return "\n".join(out)
