"""Export ImageBind towers to ONNX, one file per tower, and describe them in the bundle manifest.

Host side (torch + onnx). Each tower is traced with the TorchScript exporter, which the research
notes validated tower by tower (IMU included, since our IMU stem uses reshape rather than unfold),
re-saved by ``onnx`` (one ``.onnx.data`` file beside models over 2 GB), checked, compared with
PyTorch under ONNX Runtime and only then moved under its final name.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__
from .._io import sha256_file
from .._lazy import require
from ..bundle.manifest import Artifact, CreatedBy, Manifest, TensorSpec, TowerRecord, load_manifest, save_manifest
from ..bundle.manifest import MANIFEST_NAME
from ..bundle.schema import RANDOM_INIT
from ..errors import ConfigError, ExportError
from ..modality import Modality
from . import checks
from .graph_fold import fold_weight_only_nodes

logger = logging.getLogger(__name__)

EXPORTER = "torch.onnx.export(dynamo=False)"
MIN_OPSET = 17  # LayerNormalization is a single op from opset 17 on
OUTPUT_NAME = "embedding"
# protobuf cannot serialise a message of 2 GiB or more; stay clear of it (the graph adds a little).
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
FP32_BACKENDS = ("onnxruntime", "tensorrt")
INPUT_NAMES = {
    Modality.VISION: "image",
    Modality.TEXT: "tokens",
    Modality.AUDIO: "audio_melspec",
    Modality.DEPTH: "depth",
    Modality.THERMAL: "thermal",
    Modality.IMU: "imu",
}
VIDEO_INPUT_NAME = "video"


def tower_input_spec(config: Any, modality: str | Modality, *, video: bool = False) -> TensorSpec:
    """The documented ONNX input of a tower: named by modality, dynamic 'batch' first, the rest fixed."""
    m = Modality.parse(modality)
    if video and m is not Modality.VISION:
        raise ConfigError(f"video=True applies to the vision tower only, not {m.value!r}")
    name = VIDEO_INPUT_NAME if video else INPUT_NAMES[m]
    dtype = "int64" if m is Modality.TEXT else "float32"
    return TensorSpec(name=name, shape=("batch", *config.input_shape(m, video=video)), dtype=dtype)


def tower_output_spec(config: Any) -> TensorSpec:
    return TensorSpec(name=OUTPUT_NAME, shape=("batch", int(config.out_embed_dim)), dtype="float32")


def artifact_file_name(
    model_name: str, modality: str | Modality, *, video: bool = False, precision: str = "fp32"
) -> str:
    """``{model}.{modality}.{precision}.onnx``; the video variant of vision is ``vision-video``."""
    tower = Modality.parse(modality).value + ("-video" if video else "")
    return f"{model_name}.{tower}.{precision}.onnx"


def config_sha256(config: Any) -> str:
    """A stable hash of a model config (its JSON with sorted keys)."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def export_tower(
    model: Any,
    modality: str | Modality,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = MIN_OPSET,
    video: bool = False,
    sample_inputs: np.ndarray | None = None,
    model_name: str | None = None,
    n_samples: int = 4,
    seed: int = 0,
    preprocess: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    max_abs_diff: float = checks.FP32_MAX_ABS_DIFF,
    min_cosine: float = checks.FP32_MIN_COSINE,
    release_weights: bool = False,
) -> TowerRecord:
    """Export one tower of ``model`` to ``out_dir/{model}.{modality}.fp32.onnx`` and return its manifest record.

    ``sample_inputs`` (real preprocessed rows, [N, ...]) are used for the parity check; without them
    ``n_samples`` deterministic random rows are drawn with ``seed``. Models whose weights exceed
    ``external_data_threshold`` bytes keep them in one ``<file>.onnx.data`` beside the model.
    Nothing appears under the final names unless every check passed.

    ``release_weights``: once traced, move ``model``'s parameters to the meta device (the caller is
    done with it), so the ONNX re-save and the ONNX Runtime parity check do not hold a second copy of
    the weights beside the PyTorch one (imagebind_huge vision: 7.7 -> see benchmarks/results peak RSS).
    """
    m = Modality.parse(modality)
    if opset < MIN_OPSET:
        raise ConfigError(f"opset: expected {MIN_OPSET} or higher (LayerNormalization), got {opset}")
    model_name = model_name or getattr(model, "name", None)
    if not model_name:
        raise ConfigError("model_name: the model has no .name; pass model_name='imagebind_huge' or similar")
    config = model.config
    in_spec, out_spec = tower_input_spec(config, m, video=video), tower_output_spec(config)
    if sample_inputs is not None:
        inputs = checks.check_sample_inputs(sample_inputs, in_spec)
    else:
        vocab_size = int(getattr(config, "text_vocab_size", 49408))
        inputs = checks.sample_inputs(in_spec, n_samples, seed=seed, vocab_size=vocab_size)
    tower = model.tower(m, video=True) if video else model.tower(m)
    tower.eval()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    file_name = artifact_file_name(model_name, m, video=video)
    work = Path(tempfile.mkdtemp(prefix=f".{file_name}.", suffix=".tmp", dir=out_dir))
    try:
        traced = work / "traced" / "model.onnx"
        reference = checks.torch_embeddings(tower, inputs)
        logit_scale = float(model.logit_scale(m))
        _trace(tower, inputs, traced, in_spec, opset)
        if release_weights:
            _release_weights(model)
        staged = work / "final" / file_name
        data_name = _save_consolidated(traced, staged, external_data_threshold, out_spec)
        checks.check_onnx_model(staged)
        checks.require_ops(staged, ["LayerNormalization"])
        checks.check_interface(staged, [in_spec], [out_spec])
        fidelity = checks.check_parity(reference, staged, in_spec, inputs, max_abs_diff=max_abs_diff,
                                       min_cosine=min_cosine)
        artifact = Artifact(
            precision="fp32",
            form="fp32",
            file=file_name,
            sha256=sha256_file(staged),
            size_bytes=staged.stat().st_size,
            **_data_fields(staged.parent, data_name),
            backends=FP32_BACKENDS,
            fidelity=fidelity,
            provenance={**_tower_provenance(config, opset, video), **dict(provenance or {})},
        )
        _publish(staged, data_name, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("exported %s tower to %s (%.1f MB)", m.value, out_dir / file_name, artifact.size_bytes / 1e6)
    return TowerRecord(
        input=in_spec,
        output=out_spec,
        logit_scale=logit_scale,
        video=video,
        preprocess=dict(preprocess or {}),
        artifacts=(artifact,),
    )


def _release_weights(model: Any) -> None:
    """Free the parameter and buffer storage of ``model`` (moved to the meta device, shapes kept)."""
    model.to("meta")
    gc.collect()


def _tower_provenance(config: Any, opset: int, video: bool) -> dict[str, Any]:
    torch = require("torch", extra="export", purpose="ONNX export")
    return {
        "model_config_sha256": config_sha256(config),
        "opset": opset,
        "exporter": EXPORTER,
        "torch": torch.__version__,
        "edgebind": __version__,
        "video": video,
    }


def _trace(tower: Any, inputs: np.ndarray, path: Path, in_spec: TensorSpec, opset: int) -> None:
    torch = require("torch", extra="export", purpose="ONNX export")
    path.parent.mkdir(parents=True)
    example = torch.from_numpy(np.array(inputs[:2]))  # >1 row, so no size-1 batch gets baked in
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter announces its deprecation on every call.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                tower,
                (example,),
                str(path),
                input_names=[in_spec.name],
                output_names=[OUTPUT_NAME],
                dynamic_axes={in_spec.name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:  # the exporter raises many unrelated types; keep the cause attached
        raise ExportError(f"torch.onnx.export failed for the {in_spec.name!r} tower: {exc}") from exc


def _tensor_bytes(model_proto: Any) -> int:
    numpy_helper = require("onnx.numpy_helper", extra="export")
    total = 0
    tensors = list(model_proto.graph.initializer)
    constants = [n for n in model_proto.graph.node if n.op_type == "Constant"]
    tensors += [a.t for n in constants for a in n.attribute if a.name == "value"]
    for tensor in tensors:
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).nbytes
    return total


def _pin_output_dims(proto: Any, spec: TensorSpec) -> None:
    """Write the fixed output dims into the graph: the tracer leaves the embedding width symbolic
    (a name such as 'Divembedding_dim_1'), and TensorRT and our interface check want it static."""
    for output in proto.graph.output:
        if output.name != spec.name:
            continue
        dims = output.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise ExportError(f"output {spec.name!r} has rank {len(dims)}; expected shape {list(spec.shape)}")
        for dim, want in zip(dims, spec.shape):
            if isinstance(want, str):
                continue
            if dim.HasField("dim_value") and dim.dim_value != want:
                raise ExportError(f"output {spec.name!r} has dims {list(dims)}; expected shape {list(spec.shape)}")
            dim.dim_value = want


def _save_consolidated(traced: Path, staged: Path, threshold: int, out_spec: TensorSpec) -> str | None:
    """Re-save the traced model; weights over ``threshold`` bytes go to ONE ``<file>.data``. Returns its name."""
    onnx = require("onnx", extra="export", purpose="ONNX export")
    proto = onnx.load(str(traced))  # also pulls in any per-tensor files the exporter wrote
    _pin_output_dims(proto, out_spec)
    fold_weight_only_nodes(proto)
    staged.parent.mkdir(parents=True)
    weight_bytes = _tensor_bytes(proto)
    if weight_bytes <= threshold:
        onnx.save_model(proto, str(staged))
        return None
    data_name = staged.name + ".data"
    logger.info("%s: %.2f GB of weights, stored as external data in %s", staged.name, weight_bytes / 1e9, data_name)
    onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return data_name


def _data_fields(folder: Path, data_name: str | None) -> dict[str, Any]:
    if data_name is None:
        return {}
    path = folder / data_name
    return {"data_file": data_name, "data_sha256": sha256_file(path), "data_size_bytes": path.stat().st_size}


def _seal(path: Path) -> None:
    """Make a staged file world-readable and flush it to disk before it is renamed into place."""
    # Temp files may be created owner-only (0600); bundles are read by other users on the device.
    os.chmod(path, 0o644)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _publish(staged: Path, data_name: str | None, out_dir: Path) -> None:
    """Move checked files under their final names: data first, so a model never points at missing data."""
    final = out_dir / staged.name
    stale_data = out_dir / (staged.name + ".data")
    if data_name is not None:
        _seal(staged.parent / data_name)
        os.replace(staged.parent / data_name, out_dir / data_name)
    _seal(staged)
    os.replace(staged, final)
    if data_name is None:
        with contextlib.suppress(FileNotFoundError):
            stale_data.unlink()  # an earlier export of this tower used external data; this one does not


def export_model(
    name: str,
    modalities: str | Sequence[str | Modality],
    out_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    random_init: bool = False,
    seed: int = 0,
    opset: int = MIN_OPSET,
    video: bool = False,
    preprocess: Mapping[str, Mapping[str, Any]] | None = None,
    sample_inputs: Mapping[str, np.ndarray] | None = None,
    n_samples: int = 4,
    force: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> Manifest:
    """Export the fp32 ONNX towers of model ``name`` into ``out_dir`` and write its ``manifest.json``.

    Towers are built, exported and freed one at a time, so peak memory stays near the largest tower.
    Weights come from ``checkpoint`` or, with ``random_init=True``, from ``seed``. ``video=True``
    exports the vision tower for [B, 3, T, H, W] clips instead of images. ``preprocess`` maps a
    modality to the preprocessing config dict recorded for it; ``sample_inputs`` maps a modality to
    real preprocessed rows for the parity check.

    Idempotent: a tower whose manifest entry has the same provenance (model config, weights, opset,
    exporter and edgebind versions) and whose files still match their sha256 is skipped ("up to
    date"); ``force=True`` re-exports anyway. Other towers already in the bundle are kept when they
    come from the same model and weights. The manifest is saved after each exported tower.
    """
    from ..models.config import get_config  # torch-free

    wanted = Modality.parse_list(modalities)
    if (checkpoint is None) == (not random_init):
        raise ConfigError(
            "export_model: pass checkpoint=PATH, or random_init=True (with seed=) for a seeded random model; not both"
        )
    config = get_config(name)
    out_dir = Path(out_dir)
    if checkpoint is not None:
        from ..models.checkpoint import checkpoint_sha256

        weights = checkpoint_sha256(checkpoint)
    else:
        weights = RANDOM_INIT
    header = {
        "model": name,
        "model_config_sha256": config_sha256(config),
        "checkpoint_sha256": weights,
        "seed": seed if random_init else None,
    }
    previous = load_manifest(out_dir) if (out_dir / MANIFEST_NAME).is_file() else None
    kept = {k: t for k, t in (previous.towers.items() if previous else ()) if _same_source(t, header)}
    manifest = Manifest(
        model=name,
        model_config=config.to_dict(),
        checkpoint_sha256=weights,
        seed=header["seed"],
        created_by=_created_by(opset),
        towers=kept,
        label_bank=previous.label_bank if previous is not None and len(kept) == len(previous.towers) else None,
    )
    preprocess = {Modality.parse(k).value: dict(v) for k, v in (preprocess or {}).items()}
    samples = {Modality.parse(k).value: v for k, v in (sample_inputs or {}).items()}

    for m in wanted:
        tower_video = video and m is Modality.VISION
        provenance = {**header, **_tower_provenance(config, opset, tower_video)}
        old = manifest.towers.get(m.value)
        prep = preprocess.get(m.value, old.preprocess if old is not None else {})
        if not force and old is not None and _up_to_date(old, provenance, out_dir):
            logger.info("%s tower: up to date (%s), not re-exported", m.value, old.artifact("fp32", "fp32").file)
            if prep != old.preprocess:
                manifest = manifest.with_tower(m, TowerRecord.from_dict({**old.to_dict(), "preprocess": prep}))
            continue
        record = _build_and_export(
            name, m, out_dir, checkpoint=checkpoint, seed=seed, opset=opset, video=tower_video, preprocess=prep,
            sample_inputs=samples.get(m.value), n_samples=n_samples, provenance=header,
            external_data_threshold=external_data_threshold,
        )
        if old is not None and len(old.artifacts) > 1:
            logger.warning("%s tower: re-exported, so its derived artifacts %s were dropped from the manifest",
                           m.value, [a.form for a in old.artifacts if a.form != "fp32"])
        manifest = manifest.with_tower(m, record)
        save_manifest(manifest, out_dir)
    if manifest != previous:
        save_manifest(manifest, out_dir)
    return manifest


def _created_by(opset: int) -> CreatedBy:
    torch = require("torch", extra="export", purpose="ONNX export")
    onnx = require("onnx", extra="export", purpose="ONNX export")
    ort = require("onnxruntime", extra="export", purpose="checking exported models")
    return CreatedBy(edgebind=__version__, torch=torch.__version__, onnx=onnx.__version__,
                     onnxruntime=ort.__version__, opset=opset, exporter=EXPORTER)


def _fp32(tower: TowerRecord) -> Artifact | None:
    return next((a for a in tower.artifacts if a.precision == "fp32" and a.form == "fp32"), None)


def _same_source(tower: TowerRecord, header: Mapping[str, Any]) -> bool:
    """Whether a tower already in the bundle comes from the same model, config and weights."""
    art = _fp32(tower)
    return art is not None and all(art.provenance.get(k) == v for k, v in header.items())


def _up_to_date(tower: TowerRecord, provenance: Mapping[str, Any], out_dir: Path) -> bool:
    art = _fp32(tower)
    if art is None or art.provenance != dict(provenance):
        return False
    for rel, digest, size in art.files():
        path = out_dir / rel
        if not path.is_file() or path.stat().st_size != size or sha256_file(path) != digest:
            logger.info("%s: changed or missing on disk, re-exporting", path)
            return False
    return True


def _build_and_export(
    name: str, modality: Modality, out_dir: Path, *, checkpoint: str | os.PathLike[str] | None, seed: int, **kwargs: Any
) -> TowerRecord:
    """Build only ``modality``'s tower, load its weights, export it, and free it before the next one."""
    from ..models.imagebind import build

    # init="none" skips the random init that the checkpoint would overwrite anyway.
    model = build(name, modalities=[modality.value], seed=seed, init="random" if checkpoint is None else "none")
    try:
        if checkpoint is not None:
            from ..models.checkpoint import load_pretrained

            load_pretrained(model, checkpoint)
        return export_tower(model, modality, out_dir, model_name=name, seed=seed, release_weights=True, **kwargs)
    finally:
        del model
        gc.collect()
