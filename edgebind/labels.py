"""Label banks: text prompts embedded once at export time, so a device needs no text tower for zero-shot recognition.

A label bank is one JSON file: the labels, their unit-norm embeddings (float32, base64, row-major), the text
temperature, and which model/weights/text artifact produced them, so the runtime can refuse a bank made for a
different embedding space. Numpy + onnxruntime only (no torch): ``embed_labels`` runs the bundle's FP32 text ONNX.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import atomic_write_json, sha256_file
from ._ort_options import session_options
from .errors import ConfigError, ManifestError
from .modality import Modality

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "edgebind-label-bank"


@dataclasses.dataclass(frozen=True)
class LabelBank:
    """Labels with their unit-norm embeddings [N, D] and the logit scale that turns cosines into probabilities."""

    labels: tuple[str, ...]
    embeddings: np.ndarray
    logit_scale: float
    model: str = ""
    weights: str = ""
    text_artifact_sha256: str = ""
    template: str = "{}"

    def __post_init__(self) -> None:
        emb = np.asarray(self.embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(self.labels) or emb.shape[0] == 0:
            raise ConfigError(
                f"label bank: embeddings must be [N, D] with N = {len(self.labels)} labels, got shape {emb.shape}"
            )
        if not np.isfinite(emb).all():
            raise ConfigError("label bank: embeddings contain NaN/inf")
        if len(set(self.labels)) != len(self.labels):
            dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise ConfigError(f"label bank: duplicate labels {dupes[:5]}")
        if not (np.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ConfigError(f"label bank: logit_scale must be a positive number, got {self.logit_scale!r}")
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        emb.setflags(write=False)
        object.__setattr__(self, "embeddings", emb)
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def similarities(self, emb: np.ndarray) -> np.ndarray:
        """Cosine similarity of embeddings [D] or [B, D] with every label: [B, N]."""
        x = np.asarray(emb, dtype=np.float32)
        x = x[None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.embed_dim:
            raise ConfigError(f"label bank: expected embeddings of width {self.embed_dim}, got shape {np.shape(emb)}")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x @ self.embeddings.T

    def probabilities(self, emb: np.ndarray) -> np.ndarray:
        """Softmax over labels of ``logit_scale * cosine`` (ImageBind's zero-shot rule): [B, N]."""
        logits = self.logit_scale * self.similarities(emb)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def top_k(self, emb: np.ndarray, k: int = 5) -> list[list[tuple[str, float, float]]]:
        """Per row, the k best labels as (label, cosine, probability), best first."""
        if k < 1:
            raise ConfigError(f"top_k: k must be >= 1, got {k}")
        sims = self.similarities(emb)
        probs = self.probabilities(emb)
        out = []
        for s, p in zip(sims, probs):
            order = np.argsort(-s, kind="stable")[:k]
            out.append([(self.labels[i], float(s[i]), float(p[i])) for i in order])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "weights": self.weights,
            "text_artifact_sha256": self.text_artifact_sha256,
            "template": self.template,
            "logit_scale": float(self.logit_scale),
            "embed_dim": self.embed_dim,
            "labels": list(self.labels),
            "embeddings_f32le_b64": base64.b64encode(self.embeddings.astype("<f4").tobytes()).decode("ascii"),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "label bank") -> "LabelBank":
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ManifestError(f"{source}: not an edgebind label bank (expected \"kind\": \"{KIND}\")")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"{source}: schema_version {data.get('schema_version')!r} is not supported "
                                f"(this edgebind reads {SCHEMA_VERSION})")
        try:
            labels = tuple(data["labels"])
            dim = int(data["embed_dim"])
            raw = base64.b64decode(data["embeddings_f32le_b64"], validate=True)
            emb = np.frombuffer(raw, dtype="<f4")
            if emb.size != len(labels) * dim:
                raise ManifestError(f"{source}: embeddings hold {emb.size} values, expected {len(labels)} x {dim}")
            return cls(
                labels=labels, embeddings=emb.reshape(len(labels), dim).astype(np.float32),
                logit_scale=float(data["logit_scale"]), model=str(data.get("model", "")),
                weights=str(data.get("weights", "")), text_artifact_sha256=str(data.get("text_artifact_sha256", "")),
                template=str(data.get("template", "{}")),
            )
        except KeyError as exc:
            raise ManifestError(f"{source}: missing field {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LabelBank":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path}: label bank not found; create one with `edgebind labels ... --bundle DIR`") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: cannot read the label bank ({exc})") from None
        return cls.from_dict(data, source=str(path))

    def check_matches(self, manifest: Any) -> None:
        """Refuse a bank made by another model or other weights than the bundle's: the spaces would not match."""
        problems = []
        if self.model and self.model != manifest.model:
            problems.append(f"model {self.model!r} != bundle model {manifest.model!r}")
        if self.weights and self.weights != _weights_id(manifest):
            problems.append(f"weights {self.weights!r} != bundle weights {_weights_id(manifest)!r}")
        out_dim = next(iter(manifest.towers.values())).output.shape[-1] if manifest.towers else self.embed_dim
        if int(out_dim) != self.embed_dim:
            problems.append(f"embedding width {self.embed_dim} != bundle output width {out_dim}")
        if problems:
            raise ManifestError("label bank does not belong to this bundle: " + "; ".join(problems))


def _weights_id(manifest: Any) -> str:
    if manifest.seed is not None:
        return f"{manifest.checkpoint_sha256}:seed={manifest.seed}"
    return str(manifest.checkpoint_sha256)


def read_label_file(path: str | os.PathLike[str]) -> list[str]:
    """One label per line; blank lines and lines starting with '#' are ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    labels = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not labels:
        raise ConfigError(f"{path}: no labels (one per line; '#' starts a comment)")
    return labels


def embed_labels(
    bundle_dir: str | os.PathLike[str], labels: Sequence[str], *, template: str = "{}", threads: int | None = None
) -> LabelBank:
    """Embed ``labels`` with the bundle's FP32 text tower (ONNX Runtime CPU), once, at export time."""
    import onnxruntime as ort

    from .bundle.manifest import load_manifest, verify_files
    from .preprocess.text import tokenize

    if not labels:
        raise ConfigError("embed_labels: no labels given")
    if "{}" not in template:
        raise ConfigError(f"template {template!r} must contain '{{}}' where the label goes")
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    if Modality.TEXT.value not in manifest.towers:
        raise ManifestError(f"{bundle_dir}: the bundle has no text tower; export it with --modalities text,...")
    tower = manifest.tower(Modality.TEXT)
    artifact = tower.artifact("fp32", "fp32")
    verify_files(manifest, bundle_dir, modalities=[Modality.TEXT])
    options = session_options(ort, threads=threads)
    session = ort.InferenceSession(os.fspath(bundle_dir / artifact.file), options, providers=["CPUExecutionProvider"])
    tokens = tokenize([template.format(label) for label in labels])
    rows = [session.run(None, {tower.input.name: tokens[i : i + 64]})[0] for i in range(0, len(tokens), 64)]
    bank = LabelBank(
        labels=tuple(labels), embeddings=np.concatenate(rows), logit_scale=tower.logit_scale, model=manifest.model,
        weights=_weights_id(manifest), text_artifact_sha256=artifact.sha256, template=template,
    )
    logger.info("embedded %d labels with %s", len(labels), artifact.file)
    return bank


def register_in_manifest(bundle_dir: str | os.PathLike[str], bank_path: str | os.PathLike[str], bank: LabelBank) -> None:
    """Record a bank that lives inside the bundle folder in its manifest (file, sha256, size)."""
    from .bundle.manifest import LabelBank as LabelBankRecord
    from .bundle.manifest import load_manifest, save_manifest

    bundle_dir, bank_path = Path(bundle_dir).resolve(), Path(bank_path).resolve()
    try:
        rel = bank_path.relative_to(bundle_dir)
    except ValueError:
        return  # outside the bundle: the bank stands on its own
    manifest = load_manifest(bundle_dir)
    record = LabelBankRecord(
        file=rel.as_posix(), sha256=sha256_file(bank_path), size_bytes=bank_path.stat().st_size,
        modality=Modality.TEXT.value, n_labels=len(bank.labels), embed_dim=bank.embed_dim,
        description=f"text prompts, template {bank.template!r}",
    )
    save_manifest(dataclasses.replace(manifest, label_bank=record), bundle_dir)
