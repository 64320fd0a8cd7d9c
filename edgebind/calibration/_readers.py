"""File readers for the folder builder: each returns raw arrays or raises ``Unusable`` with the reason.

Reasons are shown to the user as they are, so they say what was found and what was expected.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require

logger = logging.getLogger(__name__)


class Unusable(Exception):
    """A file cannot be used; the message is the reason reported to the user."""


def open_image(path: Path) -> Any:
    """The fully decoded Pillow image (a truncated or non-image file fails here, not later)."""
    Image = require("PIL.Image", purpose="reading image calibration files")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()  # detached from the file, which the with-block closes
    except Image.DecompressionBombError as exc:
        raise Unusable(f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Unusable(f"not a readable image ({exc})") from None


def read_photo(path: Path) -> np.ndarray:
    """8-bit image file -> uint8 H x W x 3 RGB, as the reference's PIL ``convert("RGB")``."""
    im = open_image(path)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise Unusable(f"{im.mode} (16-bit/float) image: vision takes 8-bit photos; put depth frames under "
                       "depth/ and thermal frames under thermal/")
    return np.asarray(im.convert("RGB"))


def read_frame16(path: Path, what: str, allow_8bit: bool) -> np.ndarray:
    """Single-channel frame: uint16 (16-bit or 32-bit integer within range), float32 (mode F), or uint8 grey."""
    im = open_image(path)
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise Unusable(f"{what}: 32-bit integer values outside 0..65535")
        return arr.astype(np.uint16)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if not allow_8bit:
        raise Unusable(f"{what} image must be 16-bit single channel (millimetres), got Pillow mode {im.mode}")
    if im.mode == "L":
        return np.asarray(im)
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
        raise Unusable(f"{what} image is colour (RGB with differing channels): a false-colour rendering, "
                       "not intensity; use the camera's raw single-channel frames")
    raise Unusable(f"{what} image has unsupported Pillow mode {im.mode}; expected 16-bit or 8-bit grey")


def read_npy_map(path: Path, what: str) -> np.ndarray:
    """A 2-D float array from a .npy file (no pickles)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise Unusable(f"not a readable .npy array ({exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise Unusable(f"{what} .npy must be a 2-D float array, got {arr.dtype}{list(arr.shape)}")
    return arr


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Audio file -> float32 [samples, channels] and its sample rate."""
    soundfile = require("soundfile", extra="sensors", purpose="reading audio calibration files")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise Unusable(f"not a readable audio file ({exc})") from None
    if data.shape[0] == 0:
        raise Unusable("audio file has no samples")
    return data, int(rate)


_TIME_NAMES = {"t", "time", "timestamp", "stamp", "ts", "time_stamp", "elapsed"}
_TIME_SCALE = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_AXIS_PREFIXES = {
    "a": ("a", "acc", "accel", "acceleration", "accelerometer", "linear_acceleration", "lin_acc"),
    "g": ("g", "gyr", "gyro", "gyroscope", "angular_velocity", "ang_vel", "w", "omega"),
}
_AXIS_ALIASES = {
    f"{p}{sep}{axis}": f"{kind}{axis}"
    for kind, prefixes in _AXIS_PREFIXES.items()
    for p in prefixes
    for sep in ("", "_")
    for axis in "xyz"
}
_IMU_COLUMNS = ("ax", "ay", "az", "gx", "gy", "gz")


def _column(name: str) -> tuple[str, str | None]:
    """Normalised column name and unit: 'Accel X [m/s^2]' -> ('accel_x', 'm/s^2'), 'time_ns' -> ('time', 'ns')."""
    n = name.strip().lower().lstrip("#").strip()
    unit = None
    m = re.search(r"[\[(]\s*([^\])]*?)\s*[\])]", n)
    if m:
        unit, n = m.group(1), n[: m.start()] + n[m.end():]
    n = re.sub(r"[\s\-.:/]+", "_", n).strip("_")
    for suffix in _TIME_SCALE:
        base = n[: -len(suffix) - 1]
        if n.endswith("_" + suffix) and base in _TIME_NAMES:
            return base, suffix
    return n, unit


def read_imu_csv(path: Path, imu_rate: float | None) -> tuple[np.ndarray, float, dict[str, Any]]:
    """IMU CSV -> samples [N, 6] (ax, ay, az, gx, gy, gz), rate in Hz, and what the manifest records."""
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheet BOMs
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 3:
        raise Unusable("IMU CSV needs a header row and at least 2 data rows")
    columns = [_column(c) for c in rows[0]]
    index: dict[str, int] = {}
    time_unit: str | None = None
    for i, (name, unit) in enumerate(columns):
        canonical = "t" if name in _TIME_NAMES else _AXIS_ALIASES.get(name, name)
        if canonical in index:
            continue
        index[canonical] = i
        if canonical == "t":
            time_unit = unit
    missing = [c for c in _IMU_COLUMNS if c not in index]
    if missing:
        raise Unusable(f"IMU CSV lacks column(s) {missing}; header is {rows[0]}; expected t, ax, ay, az, gx, gy, gz")
    wanted = ([index["t"]] if "t" in index else []) + [index[c] for c in _IMU_COLUMNS]
    try:
        values = np.array([[float(r[i]) for i in wanted] for r in rows[1:]], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise Unusable(f"IMU CSV has a non-numeric or short data row ({exc})") from None
    samples = values[:, -6:]
    info: dict[str, Any] = {"rows_in_file": int(samples.shape[0])}
    if "t" in index:
        if time_unit is not None and time_unit not in _TIME_SCALE:
            raise Unusable(f"IMU CSV time unit {time_unit!r} unknown; expected one of {sorted(_TIME_SCALE)}")
        t = values[:, 0] * _TIME_SCALE[time_unit or "s"]
        dt = np.diff(t)
        if np.any(dt <= 0):
            raise Unusable(f"IMU CSV timestamps are not strictly increasing (data row {int(np.argmax(dt <= 0)) + 2})")
        rate_from_t = (t.size - 1) / float(t[-1] - t[0])
        info["rate_from_timestamps"] = round(rate_from_t, 6)
        if imu_rate is None:
            if not 0.1 <= rate_from_t <= 100_000:
                raise Unusable(f"IMU timestamps imply {rate_from_t:g} Hz; name the time column with its unit "
                               "(time_ms, time_ns, 'time [ns]') or pass imu_rate")
            return samples, rate_from_t, info
        if abs(rate_from_t - imu_rate) > 0.05 * imu_rate:
            logger.warning("%s: timestamps imply %.4g Hz but imu_rate is %.4g Hz; using imu_rate", path, rate_from_t, imu_rate)
    elif imu_rate is None:
        raise Unusable("IMU CSV has no time column; add one (t, time, timestamp) or pass imu_rate (--imu-rate)")
    return samples, float(imu_rate), info  # type: ignore[arg-type]


def read_intrinsics(path: Path) -> tuple[float, float]:
    """(fx in pixels, baseline in metres) from an intrinsics.json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        fx, baseline = float(data["fx"]), float(data["baseline"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Unusable(f"{path.name} unreadable; expected {{\"fx\": pixels, \"baseline\": metres}} ({exc!r})") from None
    if not (np.isfinite(fx) and fx > 0 and np.isfinite(baseline) and baseline > 0):
        raise Unusable(f"{path.name}: fx and baseline must be positive, got {fx}, {baseline}")
    return fx, baseline


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-empty line."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    found = [(i + 1, line.strip()) for i, line in enumerate(lines) if line.strip()]
    if not found:
        raise Unusable("text file has no non-empty line")
    return found
