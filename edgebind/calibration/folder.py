"""Build a calibration set from a user's folder of sensor files.

The folder is scanned recursively (hidden files and folders, and the output folder, are ignored).
Each file is classified by a *hint* from its path and by its extension; the hint is a folder name
on the path below the source folder (``depth``, ``disparity``, ``thermal``, ``text``) or, for
depth/disparity/thermal, the same word inside the file name (``cam0_depth_0001.png``):

==========================  ==================================================================
file                        becomes
==========================  ==================================================================
.jpg .jpeg .png .bmp .webp  vision (8-bit RGB/grey; alpha dropped, palettes expanded). 16-bit or
                            float images without a depth/thermal hint are reported, not guessed.
.png .tif .tiff + depth     depth: 16-bit single channel in millimetres (0 = no measurement), or a
                            32-bit float TIFF in metres. Disparity images are reported (use .npy).
.npy + depth (or no hint)   depth: 2-D float array in metres (0/NaN/inf = no measurement).
.npy + disparity            depth: 2-D float disparity in pixels, used as is (no fx/baseline).
image/.npy + thermal        thermal: 16-bit or 8-bit single channel (raw counts or LLVIP-style
                            grey), or 2-D float .npy. RGB is accepted only when its channels are
                            equal; a false-colour rendering is reported as a mismatch.
.wav .flac .ogg .oga        audio (read with soundfile, extra ``sensors``); each file gives one row
                            per clip (3).
.csv                        IMU: header row naming a time column (t, time, timestamp[_s|_ms|_us|_ns],
                            units in brackets allowed) and ax, ay, az, gx, gy, gz (also acc_x,
                            accel_x, accelerometer_x, linear_acceleration.x, gyro_x, gyr_x,
                            angular_velocity.x, ...). The rate comes from ``imu_rate`` when given,
                            else from the timestamps.
.txt + text                 text: one caption per non-empty line (also every line of ``text_file``).
intrinsics.json             read, not a sample: {"fx": px, "baseline": m} for the depth files in its
                            folder and below (the nearest one wins; ``fx``/``baseline`` override).
==========================  ==================================================================

Anything else, and every file that cannot be read or does not match its class, is *reported*:
returned as ``(file, reason)``, logged with ``logging.warning`` and recorded under ``skipped`` in the
manifest. Depth files without intrinsics are reported the same way. The calib/val split is by file
(by line for text) and deterministic for a given seed.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import sha256_file
from ..errors import CalibrationError, ConfigError, EdgebindError, MissingDependencyError
from ..modality import ALL_MODALITIES, Modality
from . import _build
from . import _readers
from ._build import BuildResult, Skipped
from .store import PreparedSample, SetWriter

logger = logging.getLogger(__name__)

__all__ = ["BuildResult", "build_from_folder", "scan_folder"]

_PHOTO_EXT = {".jpg", ".jpeg", ".bmp", ".webp"}
_AUDIO_EXT = {".wav", ".flac", ".ogg", ".oga"}
_HINTS = ("disparity", "depth", "thermal", "text")
_INTRINSICS = "intrinsics.json"
_USER_DATA = ("user data", "see the data owner")  # provenance, licence of a user's own files


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file the scan assigned to a modality, with how to read it."""

    path: Path
    rel: str
    modality: Modality
    kind: str  # photo | depth_image | depth_npy | disparity_npy | thermal_image | thermal_npy | audio | imu_csv | text


def _hint(rel_parts: Sequence[str]) -> str | None:
    folders = [p.lower() for p in rel_parts[:-1]]
    stem = Path(rel_parts[-1]).stem.lower()
    for hint in _HINTS:
        if hint in folders:
            return hint
    for hint in _HINTS[:3]:
        if hint in stem:
            return hint
    return None


def classify(path: Path, rel_parts: Sequence[str]) -> tuple[Modality, str] | str:
    """``(modality, kind)`` for a usable file type, else the reason it is not a calibration file."""
    ext = path.suffix.lower()
    hint = _hint(rel_parts)
    if ext in _AUDIO_EXT:
        return Modality.AUDIO, "audio"
    if ext == ".csv":
        return Modality.IMU, "imu_csv"
    if ext == ".txt":
        return (Modality.TEXT, "text") if hint == "text" else "text files are read only from a text/ folder or text_file"
    if hint == "thermal" and (ext in _PHOTO_EXT or ext in {".png", ".tif", ".tiff"}):
        return Modality.THERMAL, "thermal_image"
    if hint == "thermal" and ext == ".npy":
        return Modality.THERMAL, "thermal_npy"
    if hint == "disparity" and ext in {".png", ".tif", ".tiff"}:
        return ("disparity images are not read (their integer scale is dataset-specific); "
                "save disparity in pixels as a float .npy")
    if hint == "depth" and ext in {".png", ".tif", ".tiff"}:
        return Modality.DEPTH, "depth_image"
    if ext == ".npy":
        return (Modality.DEPTH, "disparity_npy") if hint == "disparity" else (Modality.DEPTH, "depth_npy")
    if ext in _PHOTO_EXT or ext == ".png":
        if hint in ("depth", "disparity"):
            return f"{ext} under a depth hint: depth must be a 16-bit PNG/TIFF in millimetres or a .npy in metres"
        return Modality.VISION, "photo"
    if ext in {".tif", ".tiff"}:
        return "TIFF files are read only as thermal or depth frames (put them under thermal/ or depth/)"
    return f"unsupported file type {ext or '(no extension)'!r}"


def scan_folder(
    src: Path, out: Path | None, modalities: Sequence[Modality]
) -> tuple[list[Candidate], list[Path], list[Skipped]]:
    """Walk ``src``: the candidates of the requested modalities, the intrinsics files, the reported files."""
    candidates: list[Candidate] = []
    intrinsics: list[Path] = []
    skipped: list[Skipped] = []
    out_resolved = out.resolve() if out is not None else None
    for path in sorted(src.rglob("*")):
        rel_parts = path.relative_to(src).parts
        if any(part.startswith(".") for part in rel_parts):
            continue
        if out_resolved is not None and (path.resolve() == out_resolved or out_resolved in path.resolve().parents):
            continue
        if not path.is_file():
            continue
        rel = "/".join(rel_parts)
        if path.name.lower() == _INTRINSICS:
            intrinsics.append(path)
            continue
        kind = classify(path, rel_parts)
        if isinstance(kind, str):
            skipped.append((rel, kind))
        elif kind[0] in modalities:
            candidates.append(Candidate(path, rel, kind[0], kind[1]))
        else:
            logger.debug("%s: %s file ignored (modality not requested)", rel, kind[0].value)
    return candidates, intrinsics, skipped


# ------------------------------------------------------------------------------------------------ build


@dataclasses.dataclass
class _Context:
    src: Path
    fx: float | None
    baseline: float | None
    imu_rate: float | None
    intrinsics: dict[Path, Path]  # folder -> its intrinsics.json


def _intrinsics_for(path: Path, ctx: _Context) -> tuple[float, float, str]:
    if ctx.fx is not None and ctx.baseline is not None:
        return ctx.fx, ctx.baseline, "arguments"
    folder = path.parent
    while True:
        if folder in ctx.intrinsics:
            fx, baseline = _readers.read_intrinsics(ctx.intrinsics[folder])
            return fx, baseline, ctx.intrinsics[folder].relative_to(ctx.src).as_posix()
        if folder == ctx.src or folder == folder.parent:
            break
        folder = folder.parent
    raise _readers.Unusable('depth needs fx (pixels) and baseline (metres): pass fx/baseline (--fx/--baseline) '
                            'or put an intrinsics.json {"fx": ..., "baseline": ...} in depth/')


def _depth_from_frame(frame: np.ndarray) -> tuple[np.ndarray, str]:
    if frame.dtype == np.uint16:
        return frame.astype(np.float32) / np.float32(1000.0), "mm"
    return frame.astype(np.float32), "m"


def _rows(c: Candidate, ctx: _Context) -> tuple[np.ndarray, dict[str, Any]]:
    """Read and preprocess one non-text file; raises _readers.Unusable or an EdgebindError when it is unusable."""
    if c.kind == "photo":
        return _build.image_rows(_readers.read_photo(c.path)), {}
    if c.kind in ("depth_image", "depth_npy"):
        if c.kind == "depth_image":
            raw = _readers.read_frame16(c.path, "depth", allow_8bit=False)
        else:
            raw = _readers.read_npy_map(c.path, "depth")
        depth_m, unit = _depth_from_frame(raw)
        fx, baseline, where = _intrinsics_for(c.path, ctx)
        return _build.depth_rows(depth_m, fx, baseline), {"depth_unit": unit, "fx": fx, "baseline": baseline,
                                                          "intrinsics": where}
    if c.kind == "disparity_npy":
        return _build.disparity_rows(_readers.read_npy_map(c.path, "disparity")), {"depth_unit": "disparity_px"}
    if c.kind in ("thermal_image", "thermal_npy"):
        if c.kind == "thermal_image":
            frame = _readers.read_frame16(c.path, "thermal", allow_8bit=True)
        else:
            frame = _readers.read_npy_map(c.path, "thermal")
        return _build.thermal_rows(frame), {"frame_dtype": frame.dtype.name}
    if c.kind == "audio":
        data, rate = _readers.read_audio(c.path)
        return _build.audio_rows(data, rate), {"sample_rate": rate, "channels": int(data.shape[1]),
                                               "duration_s": round(data.shape[0] / rate, 3)}
    if c.kind == "imu_csv":
        samples, rate, info = _readers.read_imu_csv(c.path, ctx.imu_rate)
        return _build.imu_rows(samples, rate), {"sample_rate": round(rate, 6), **info}
    raise AssertionError(f"unhandled kind {c.kind}")  # classify() and this table must agree


def _report(skipped: list[Skipped], rel: str, exc: BaseException) -> None:
    reason = str(exc) or type(exc).__name__
    skipped.append((rel, reason))
    logger.warning("skipping %s: %s", rel, reason)


def _produce(writer: SetWriter, files: list[Candidate], sha: dict[str, str], ctx: _Context,
             skipped: list[Skipped]) -> None:
    provenance, licence = _USER_DATA
    for c in files:
        try:
            if c.kind == "text":
                lines = _readers.text_lines(c.path)
                tokens = _build.text_rows([text for _, text in lines])
                for (lineno, text), row in zip(lines, tokens):
                    digest = _build.sha256_text(text)
                    writer.add(c.modality, PreparedSample(f"{c.rel}:{lineno}", digest, row[None], provenance, licence,
                                                          {"file_sha256": sha[c.rel], "text": text}))
                continue
            rows, extra = _rows(c, ctx)
            writer.add(c.modality, PreparedSample(c.rel, sha[c.rel], rows, provenance, licence, extra))
        except MissingDependencyError:
            raise
        except (_readers.Unusable, EdgebindError, OSError, ValueError, csv.Error) as exc:
            _report(skipped, c.rel, exc)


def build_from_folder(
    src: str | Path,
    out: str | Path,
    modalities: Sequence[Modality | str] | str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    text_file: str | Path | None = None,
    fx: float | None = None,
    baseline: float | None = None,
    imu_rate: float | None = None,
    name: str | None = None,
) -> BuildResult:
    """Scan ``src`` (rules in the module docstring), preprocess every usable file and write the set to ``out``.

    Returns a :class:`BuildResult` whose ``skipped`` lists ``(file, reason)`` for every reported
    file. Nothing is written when ``out`` already holds a set built from the same sources and
    settings. Raises CalibrationError when the folder is missing or has no usable file.
    """
    src_path = Path(src)
    if not src_path.is_dir():
        raise CalibrationError(f"calibration source folder {src_path} does not exist or is not a folder")
    out_path = Path(out)
    mods = list(ALL_MODALITIES) if modalities is None else Modality.parse_list(modalities)  # type: ignore[arg-type]
    if (fx is None) != (baseline is None):
        raise ConfigError("fx and baseline: give both (focal length in pixels, stereo baseline in metres) or neither")
    for arg, value in (("fx", fx), ("baseline", baseline), ("imu_rate", imu_rate)):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise ConfigError(f"{arg}: expected a positive number, got {value!r}")
    files, intrinsics, skipped = scan_folder(src_path, out_path, mods)
    if text_file is not None and Modality.TEXT in mods:
        tf = Path(text_file)
        if not tf.is_file():
            raise ConfigError(f"text_file: {tf} does not exist or is not a file")
        if all(c.path.resolve() != tf.resolve() for c in files):
            files.append(Candidate(tf, str(tf), Modality.TEXT, "text"))
    for rel, reason in skipped:
        logger.warning("skipping %s: %s", rel, reason)
    if not files:
        raise CalibrationError(f"no usable calibration files in {src_path} for {', '.join(m.value for m in mods)}"
                               f" ({len(skipped)} file(s) reported: {skipped[:3]})")
    sha = {c.rel: sha256_file(c.path) for c in files}
    present = [m for m in mods if any(c.modality == m for c in files)]
    ctx = _Context(src_path, fx, baseline, imu_rate, {p.parent: p for p in intrinsics})
    inputs = {
        "builder": "folder",
        "files": [[c.rel, c.kind, sha[c.rel]] for c in files],
        "intrinsics": [[p.relative_to(src_path).as_posix(), sha256_file(p)] for p in intrinsics],
        "reported": [rel for rel, _ in skipped],
        "fx": fx, "baseline": baseline, "imu_rate": imu_rate,
    }

    def produce(writer: SetWriter) -> list[Skipped]:
        _produce(writer, files, sha, ctx, skipped)
        if not any(writer.counts().values()):
            raise CalibrationError(f"no usable calibration files in {src_path}: all {len(skipped)} reported "
                                   f"file(s) were skipped, e.g. {skipped[:3]}")
        if skipped:
            logger.warning("%d file(s) in %s were reported and skipped", len(skipped), src_path)
        return sorted(skipped)

    return _build.build_or_reuse(
        out_path, name=name or out_path.name, created_by="build_from_folder",
        note="built from the user's files in the source folder",
        modalities=present, val_fraction=val_fraction, seed=seed, inputs=inputs, produce=produce,
        extra={"source_dir": str(src_path)},
    )
