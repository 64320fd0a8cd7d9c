"""``edgebind export``: FP32 ONNX per tower, then FP16 and INT8 models with measured fidelity, in one manifest.

Order per run: calibration set (given, or the default one built from packaged data) -> FP32 export of every
requested tower (``onnx_export.export_model``, one tower in memory at a time) -> per tower, the derived
precisions from the FP32 file: FP16 (``quantize.fp16``), INT8 explicit Q/DQ with the accuracy-aware fallback
(for TensorRT and the ONNX Runtime TensorRT provider) and INT8 dynamic (for the ONNX Runtime CPU provider),
each compared with FP32 on the calibration set's validation split. Fidelity below the threshold fails the
export loudly and publishes nothing for that artifact.

Re-running with the same inputs is a no-op: a derived artifact is rebuilt only when its provenance (the FP32
file's sha256, the recipe, the calibration set's fingerprint) changed or its file no longer matches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import __version__
from .._config import ConfigMixin
from .._io import sha256_file
from ..bundle.manifest import Artifact, Fidelity, Manifest, TowerRecord, save_manifest
from ..errors import CalibrationError, ConfigError, ExportError
from ..modality import ALL_MODALITIES, Modality

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_CALIBRATION_DIR = Path("calibration") / "default"
DEFAULT_EXPORT_ROOT = Path("export")
# Batch-1 feed used for the per-backend INT8 latency decision; enough runs for a stable minimum.
_LATENCY_RUNS = 10
# Calibration inputs used to find FP16-overflowing activations (every intermediate tensor is kept per run).
_RANGE_SAMPLES = 8


@dataclasses.dataclass(frozen=True)
class ExportConfig(ConfigMixin):
    """Everything ``edgebind export`` needs; recorded (minus paths) in the artifacts' provenance."""

    model: str = "imagebind_tiny"
    modalities: tuple[str, ...] = tuple(m.value for m in ALL_MODALITIES)
    precisions: tuple[str, ...] = ("fp32",)
    checkpoint: str | None = None
    random_init: bool = False
    seed: int = 0
    calibration: str | None = None
    out: str | None = None
    opset: int = 17
    int8_method: str = "minmax"
    int8_min_mean_cosine: float = 0.99
    fp16_min_mean_cosine: float = 0.999
    measure_latency: bool = True
    threads: int = 2

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ConfigError(f"precisions: expected one or more of {list(PRECISIONS)}, got {list(self.precisions)}")
        object.__setattr__(self, "modalities", tuple(m.value for m in Modality.parse_list(list(self.modalities))))
        if (self.checkpoint is None) == (not self.random_init):
            raise ConfigError("pass a checkpoint (--checkpoint PATH or --download) or --random-init, not both")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else DEFAULT_EXPORT_ROOT / self.model


@dataclasses.dataclass
class ExportResult:
    manifest: Manifest
    out_dir: Path
    calibration_dir: Path | None
    built: list[str]
    up_to_date: list[str]

    def summary_rows(self) -> list[dict[str, Any]]:
        rows = []
        for modality, tower in self.manifest.towers.items():
            for art in tower.artifacts:
                fid = art.fidelity
                rows.append({
                    "tower": modality, "form": art.form, "file": art.file,
                    "size_mb": round((art.size_bytes + (art.data_size_bytes or 0)) / 1e6, 2),
                    "mean_cosine": None if fid is None else fid.mean_cosine,
                    "min_cosine": None if fid is None else fid.min_cosine,
                    "top1_agreement": None if fid is None else fid.top1_agreement,
                    "reference": None if fid is None else fid.reference,
                    "backends": list(art.backends),
                })
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": os.fspath(self.out_dir),
            "manifest": os.fspath(self.out_dir / "manifest.json"),
            "calibration": None if self.calibration_dir is None else os.fspath(self.calibration_dir),
            "built": self.built,
            "up_to_date": self.up_to_date,
            "artifacts": self.summary_rows(),
        }


def run_export(config: ExportConfig, *, progress: bool = True) -> ExportResult:
    """Export, convert and quantize the requested towers; returns the written manifest and what was done."""
    from .onnx_export import export_model

    modalities = [Modality.parse(m) for m in config.modalities]
    calib = _open_calibration(config, modalities)
    preprocess = {m.value: calib.entry(m)["preprocess"] for m in modalities if calib is not None and m in calib.modalities}
    sample_inputs = {m.value: np.asarray(calib.val(m)[:4]) for m in modalities if calib is not None and m in calib.modalities}
    manifest = export_model(
        config.model, [m.value for m in modalities], config.out_dir,
        checkpoint=config.checkpoint, random_init=config.random_init, seed=config.seed, opset=config.opset,
        preprocess=preprocess, sample_inputs=sample_inputs,
    )
    built: list[str] = []
    fresh: list[str] = []
    derived = [p for p in config.precisions if p != "fp32"]
    for m in modalities:
        for precision in derived:
            if calib is None or m not in calib.modalities:
                raise CalibrationError(
                    f"{precision} for the {m.value} tower needs calibration/validation data for {m.value}; "
                    f"the calibration set has {[x.value for x in calib.modalities] if calib else 'none'}"
                )
            updated = _derive(manifest, m, precision, config, calib, built, fresh, progress)
            if updated != manifest:
                manifest = updated
                save_manifest(manifest, config.out_dir)
    return ExportResult(manifest, config.out_dir, None if calib is None else calib.path, built, fresh)


def _open_calibration(config: ExportConfig, modalities: Sequence[Modality]) -> Any:
    """The calibration set to use: the given folder, else the default one (built from packaged data if absent)."""
    from ..calibration import CalibrationSet, build_default_set

    if config.calibration is not None:
        return CalibrationSet.open(config.calibration)
    # The default set doubles as the source of real parity samples for the FP32 export, so it is used even
    # for fp32-only exports; building it needs the dev extra's sample packages.
    # Keep the modalities the default set already has: rebuilding it for a subset would delete the others'
    # shards, and the next export of those towers would build them again.
    wanted = {m.value for m in modalities}
    try:
        wanted |= {m.value for m in CalibrationSet.open(DEFAULT_CALIBRATION_DIR).modalities}
    except Exception:  # noqa: BLE001 - absent or unreadable: built from scratch below
        pass
    try:
        build_default_set(DEFAULT_CALIBRATION_DIR, modalities=sorted(wanted))
    except ImportError as exc:
        if set(config.precisions) != {"fp32"}:
            raise CalibrationError(
                f"no --calibration folder given and the default set cannot be built ({exc}); "
                "run `edgebind calibrate --from DIR` on your own data and pass --calibration"
            ) from exc
        logger.warning("default calibration set unavailable (%s); FP32 parity uses random inputs", exc)
        return None
    return CalibrationSet.open(DEFAULT_CALIBRATION_DIR)


def _feeds(rows: np.ndarray, input_name: str) -> list[dict[str, np.ndarray]]:
    return [{input_name: np.ascontiguousarray(rows[i : i + 1])} for i in range(len(rows))]


def _derive(manifest: Manifest, m: Modality, precision: str, config: ExportConfig, calib: Any,
            built: list[str], fresh: list[str], progress: bool) -> Manifest:
    tower = manifest.tower(m)
    fp32 = tower.artifact("fp32", "fp32")
    out_dir = config.out_dir
    src = out_dir / fp32.file
    forms = ["fp16"] if precision == "fp16" else ["int8-qdq", "int8-dynamic"]
    provenance = {
        "source_sha256": fp32.sha256,
        "calibration_fingerprint": calib.manifest.get("fingerprint"),
        "recipe": _recipe(config, precision),
        "edgebind": __version__,
    }
    files = {form: fp32.file.replace(".fp32.onnx", f".{form}.onnx") for form in forms}
    if all(_current(tower, form, provenance, out_dir) for form in forms):
        logger.info("%s %s: up to date", m.value, "/".join(forms))
        fresh += [f"{m.value}/{form}" for form in forms]
        return manifest

    val = _feeds(np.asarray(calib.val(m)), tower.input.name)
    if precision == "fp16":
        record = _fp16(src, out_dir / files["fp16"], val, config, m, calib, tower.input.name)
        tower = tower.with_artifact(_artifact("fp16", "fp16", out_dir / files["fp16"], record, provenance,
                                              ("onnxruntime", "tensorrt"), len(val)))
    else:
        heads = manifest.model_config.get(f"{m.value}_num_heads")
        qdq, dynamic = _int8(src, out_dir, files, tower.input.name, calib, val, config, m, progress, heads)
        tower = tower.with_artifact(_artifact("int8", "int8-qdq", out_dir / files["int8-qdq"], qdq, provenance,
                                              ("tensorrt", "onnxruntime-tensorrt"), len(val)))
        tower = tower.with_artifact(_artifact("int8", "int8-dynamic", out_dir / files["int8-dynamic"], dynamic,
                                              provenance, ("onnxruntime-cpu",), len(val)))
    built += [f"{m.value}/{form}" for form in forms]
    return manifest.with_tower(m, tower)


def _recipe(config: ExportConfig, precision: str) -> dict[str, Any]:
    from ..quantize import Fp16Config

    if precision == "fp16":
        return {"fp16": Fp16Config().to_dict(), "min_mean_cosine": config.fp16_min_mean_cosine}
    return {"int8": _quant_config(config).to_dict()}


def _quant_config(config: ExportConfig) -> Any:
    from ..quantize import QuantConfig

    return QuantConfig(method=config.int8_method, min_mean_cosine=config.int8_min_mean_cosine)


def _current(tower: TowerRecord, form: str, provenance: dict[str, Any], out_dir: Path) -> bool:
    found = [a for a in tower.artifacts if a.form == form]
    if not found or found[0].provenance != provenance:
        return False
    return all((out_dir / f).is_file() and sha256_file(out_dir / f) == sha for f, sha, _ in found[0].files())


def _fp16(src: Path, dst: Path, val: list[dict[str, np.ndarray]], config: ExportConfig, m: Modality,
          calib: Any, input_name: str) -> dict[str, Any]:
    from ..quantize import convert_fp16

    from ..quantize import collect_tensor_ranges

    # Activation ranges on calibration inputs: nodes whose outputs approach the FP16 limit stay FP32.
    calib_rows = np.asarray(calib.calib(m))[:_RANGE_SAMPLES]
    ranges = collect_tensor_ranges(src, _feeds(calib_rows, input_name), threads=config.threads)
    with _published_only_if(dst) as staged:
        record = convert_fp16(src, staged, calibration_ranges=ranges, val_feeds=val)
        _check_runs(staged, val[0], dst.name)
        fid = record["fidelity"]
        if not fid["mean_cosine"] >= config.fp16_min_mean_cosine:
            raise ExportError(
                f"{m.value} FP16: mean cosine {fid['mean_cosine']:.5f} against FP32 on {len(val)} validation samples "
                f"is below the threshold {config.fp16_min_mean_cosine}; nothing was written for {dst.name}"
            )
    return record


def _int8(src: Path, out_dir: Path, files: dict[str, str], input_name: str, calib: Any,
          val: list[dict[str, np.ndarray]], config: ExportConfig, m: Modality,
          progress: bool, num_heads: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    from ..quantize import int8_backend_plan, quantize_dynamic_cpu, quantize_with_fallback
    from ..quantize.latency import compare_latency

    qconfig = _quant_config(config)
    qdq_dst, dyn_dst = out_dir / files["int8-qdq"], out_dir / files["int8-dynamic"]
    with _published_only_if(qdq_dst) as staged_qdq, _published_only_if(dyn_dst) as staged_dyn:
        qdq = quantize_with_fallback(
            src, staged_qdq, lambda: calib.reader(m, input_name), val, qconfig,
            threads=config.threads, progress=progress,
        )
        if not qdq["passed"]:
            fid = qdq["fidelity"]
            raise ExportError(
                f"{m.value} INT8 Q/DQ: best mean cosine {fid['mean_cosine']:.5f} after "
                f"{len(qdq['fallback']['rounds'])} fallback rounds is below {qconfig.min_mean_cosine}; "
                f"nothing was written for {qdq_dst.name}. Calibrate on more representative data "
                "(edgebind calibrate --from DIR) or lower --int8-min-cosine knowingly."
            )
        dynamic = quantize_dynamic_cpu(src, staged_dyn, qconfig, val_feeds=val, num_heads=num_heads)
        if not dynamic["fidelity"]["mean_cosine"] >= qconfig.min_mean_cosine:
            raise ExportError(
                f"{m.value} INT8 dynamic: mean cosine {dynamic['fidelity']['mean_cosine']:.5f} is below "
                f"{qconfig.min_mean_cosine}; nothing was written for {dyn_dst.name}"
            )
        latency = None
        if config.measure_latency:
            latency = compare_latency({"fp32": src, "int8-qdq": staged_qdq, "int8-dynamic": staged_dyn},
                                      val[0], threads=config.threads, runs=_LATENCY_RUNS)
        plan = int8_backend_plan(qdq, dynamic, latency)
    qdq.get("calibration", {}).pop("cache", None)  # a temp file of the quantizer, gone by now
    names = {os.fspath(staged_qdq): qdq_dst.name, os.fspath(staged_dyn): dyn_dst.name, os.fspath(src): src.name}
    qdq, dynamic, plan = (_renamed(r, names) for r in (qdq, dynamic, plan))
    qdq["backend_plan"] = dynamic["backend_plan"] = plan
    return qdq, dynamic


def _check_runs(path: Path, feed: dict[str, np.ndarray], name: str) -> None:
    """Load and run the converted file itself: fidelity is measured on an FP16-rounding FP32 twin, which would not
    notice a type error that makes the real file unloadable."""
    import onnxruntime as ort

    from .._ort_options import session_options

    try:
        session = ort.InferenceSession(os.fspath(path), session_options(ort), providers=["CPUExecutionProvider"])
        out = session.run(None, feed)[0]
    except Exception as exc:  # ORT raises its own exception types
        raise ExportError(f"{name}: the converted model does not run in ONNX Runtime ({exc})") from exc
    if not np.isfinite(out).all():
        raise ExportError(f"{name}: the converted model gives NaN/inf on a validation sample")


@contextlib.contextmanager
def _published_only_if(dst: Path) -> Iterator[Path]:
    """Yield a staging path beside ``dst``; it becomes ``dst`` only if the block finishes without error.

    Quantizers write external data for a source over 2 GB (the imagebind_huge vision tower) even when their output
    is smaller; such an output is re-saved under ``dst``'s own name, as one file when it fits in 2 GB.
    """
    staging = dst.with_name(f".{dst.name}.staging.onnx")
    _remove_with_data(staging)
    _remove_with_data(dst.with_name(f".{dst.name}.consolidated.onnx"))
    try:
        yield staging
        if Path(os.fspath(staging) + ".data").exists():
            staging = _consolidate(staging, dst)
        os.replace(staging, dst)
    finally:
        _remove_with_data(dst.with_name(f".{dst.name}.staging.onnx"))
        _remove_with_data(dst.with_name(f".{dst.name}.consolidated.onnx"))


def _consolidate(staging: Path, dst: Path) -> Path:
    import onnx

    model = onnx.load(os.fspath(staging))  # pulls the external data in
    out = dst.with_name(f".{dst.name}.consolidated.onnx")
    if model.ByteSize() < 2**31 - 2**26:
        onnx.save_model(model, os.fspath(out))
    else:
        raise ExportError(f"{dst.name}: over 2 GB after conversion; external data for derived models is not supported")
    logger.info("%s: external data folded into one file (%.0f MB)", dst.name, out.stat().st_size / 1e6)
    return out


def _remove_with_data(path: Path) -> None:
    for p in (path, Path(os.fspath(path) + ".data")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _renamed(value: Any, staged_to_final: dict[str, str]) -> Any:
    """Replace staging paths in a record by the published file names."""
    if isinstance(value, dict):
        return {k: _renamed(v, staged_to_final) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, staged_to_final) for v in value]
    if isinstance(value, str):
        return staged_to_final.get(value, value)
    return value


def _artifact(precision: str, form: str, path: Path, record: dict[str, Any], provenance: dict[str, Any],
              backends: tuple[str, ...], n_samples: int) -> Artifact:
    fid = record["fidelity"]
    top1 = fid.get("top1_agreement")
    fidelity = Fidelity(
        max_abs_diff=fid["max_abs_diff"], min_cosine=fid["min_cosine"], mean_cosine=fid["mean_cosine"],
        n_samples=n_samples,
        reference="onnxruntime-fp32 on the calibration validation split",
        top1_agreement=None if top1 is None or not np.isfinite(top1) else float(top1),
    )
    quantization = {k: v for k, v in record.items() if k not in ("artifact", "fidelity", "source")}
    return Artifact(
        precision=precision, form=form, file=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size,
        backends=backends, quantization=_jsonable(quantization), fidelity=fidelity, provenance=provenance,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return os.fspath(value)
    return value
