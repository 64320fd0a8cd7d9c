"""The offline demo: real packaged sample data through preprocessing and the model, all six modalities.

With ``imagebind_tiny`` (random weights) this exercises every code path offline, but its similarities carry no
meaning. With ``imagebind_huge`` and the official checkpoint the same code does zero-shot recognition.
Host-side (it runs the PyTorch model); later stages replace the model with exported engines.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .modality import Modality
from .preprocess import audio, depth, image, imu, text, thermal

logger = logging.getLogger(__name__)

DEFAULT_LABELS = (
    "a photo of a person",
    "a photo of a cat",
    "a cup of coffee",
    "a rocket launch",
    "a motorcycle",
    "a person speaking",
    "a person running",
    "a person walking",
    "a warm body in a thermal image",
)


@dataclasses.dataclass
class DemoItem:
    name: str
    modality: str
    provenance: dict[str, Any]
    embedding: np.ndarray
    top_labels: list[tuple[str, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DemoResult:
    model: str
    weights: str
    labels: list[str]
    items: list[DemoItem]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "weights": self.weights,
            "labels": self.labels,
            "seconds": self.seconds,
            "items": [
                {
                    "name": it.name,
                    "modality": it.modality,
                    "provenance": it.provenance,
                    "embedding_head": [round(float(v), 5) for v in it.embedding[:6]],
                    "norm": round(float(np.linalg.norm(it.embedding)), 6),
                    "top_labels": [[label, round(score, 4)] for label, score in it.top_labels],
                }
                for it in self.items
            ],
        }


def _collect_inputs(max_per_modality: int) -> list[tuple[str, Modality, dict[str, Any], np.ndarray]]:
    """Preprocess packaged sample data: returns (name, modality, provenance, model-input rows)."""
    from . import samples

    inputs: list[tuple[str, Modality, dict[str, Any], np.ndarray]] = []
    for name, sample in list(samples.sample_images().items())[:max_per_modality]:
        inputs.append((name, Modality.VISION, sample.provenance.to_dict(), image.preprocess(sample.image)[None]))

    d = samples.sample_depth()
    inputs.append(
        ("middlebury-motorcycle", Modality.DEPTH, d.provenance.to_dict(),
         depth.preprocess(d.depth_m, fx=d.focal_px, baseline=d.baseline_m)[None])
    )

    th = samples.sample_thermal(frames=max_per_modality)
    for i, frame in enumerate(th.frames):
        inputs.append((f"thermal-frame-{i}", Modality.THERMAL, th.provenance.to_dict(), thermal.preprocess(frame)[None]))

    m = samples.sample_imu()
    seen: set[str] = set()
    for rec, label in zip(m.recordings, m.labels):
        if str(label) in seen:
            continue
        seen.add(str(label))
        inputs.append((f"imu-{label}", Modality.IMU, m.provenance.to_dict(), imu.preprocess(rec, m.sample_rate)[None]))

    for clip in samples.sample_audio()[:max_per_modality]:
        name = Path(clip.provenance.item).stem or clip.provenance.item
        # The 3 clips of one file are 3 rows; their embeddings are averaged and re-normalised.
        inputs.append((name, Modality.AUDIO, clip.provenance.to_dict(), audio.preprocess(clip.waveform, clip.rate)))
    return inputs


def run_demo(
    model_name: str = "imagebind_tiny",
    checkpoint: str | Path | None = None,
    labels: tuple[str, ...] | list[str] = DEFAULT_LABELS,
    top_k: int = 3,
    seed: int = 0,
    max_per_modality: int = 4,
) -> DemoResult:
    """Embed the packaged samples with the PyTorch model and rank them against text labels."""
    import torch

    from .models.checkpoint import load_pretrained
    from .models.imagebind import build

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    inputs = _collect_inputs(max_per_modality)
    tokens = text.tokenize(list(labels))
    seconds["preprocess"] = time.perf_counter() - t0

    used = sorted({m for _, m, _, _ in inputs} | {Modality.TEXT}, key=lambda m: list(Modality).index(m))
    t0 = time.perf_counter()
    if checkpoint is not None:
        model = build(model_name, modalities=used, init="none")
        load_pretrained(model, checkpoint)
        weights = str(checkpoint)
    else:
        model = build(model_name, modalities=used, seed=seed)
        weights = f"random-init(seed={seed})"
        if model_name != "imagebind_tiny":
            logger.warning("%s with random weights: embeddings carry no meaning", model_name)
    seconds["build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.inference_mode():
        label_emb = model.embed(Modality.TEXT, torch.from_numpy(tokens)).numpy()
        items: list[DemoItem] = []
        for name, modality, provenance, rows in inputs:
            emb = model.embed(modality, torch.from_numpy(np.ascontiguousarray(rows))).numpy().mean(axis=0)
            emb = emb / np.linalg.norm(emb)
            # The text temperature turns cosines into zero-shot probabilities, as ImageBind's README does.
            logits = model.logit_scale(Modality.TEXT) * (label_emb @ emb)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            order = np.argsort(-probs)[:top_k]
            items.append(DemoItem(name, modality.value, provenance, emb, [(labels[i], float(probs[i])) for i in order]))
    seconds["embed"] = time.perf_counter() - t0
    return DemoResult(model_name, weights, list(labels), items, seconds)
