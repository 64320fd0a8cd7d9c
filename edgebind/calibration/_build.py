"""Shared build machinery: the preprocessing each modality goes through, and build-or-no-op.

Calibration data must go through exactly the numpy ``edgebind.preprocess`` code the device runs;
this module is the single place that binds a modality to its preprocessing module and config, so
the folder builder and the default-set builder cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..modality import Modality
from .store import MANIFEST_FILE, SetWriter, fingerprint, stored_fingerprint

logger = logging.getLogger(__name__)

# Preprocessing module and config class per modality.
_PREPROCESS: dict[Modality, tuple[str, str]] = {
    Modality.VISION: ("edgebind.preprocess.image", "ImageConfig"),
    Modality.TEXT: ("edgebind.preprocess.text", "TextConfig"),
    Modality.AUDIO: ("edgebind.preprocess.audio", "AudioConfig"),
    Modality.DEPTH: ("edgebind.preprocess.depth", "DepthConfig"),
    Modality.THERMAL: ("edgebind.preprocess.thermal", "ThermalConfig"),
    Modality.IMU: ("edgebind.preprocess.imu", "ImuConfig"),
}

Skipped = tuple[str, str]


def preprocess_module(modality: Modality) -> ModuleType:
    """The ``edgebind.preprocess`` submodule of ``modality`` (imported on first use)."""
    return importlib.import_module(_PREPROCESS[modality][0])


def default_config(modality: Modality) -> Any:
    """The default preprocessing config object of ``modality``."""
    module_name, class_name = _PREPROCESS[modality]
    return getattr(preprocess_module(modality), class_name)()


def preprocess_record(modality: Modality) -> dict[str, Any]:
    """What the manifest records about how ``modality`` rows were made."""
    module_name, class_name = _PREPROCESS[modality]
    return {"module": module_name, "function": "preprocess", "config_class": class_name,
            "config": default_config(modality).to_dict()}


def sha256_text(text: str) -> str:
    """sha256 of a caption's UTF-8 bytes (a text sample's identity)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_rows(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 (or gray HxW) image -> vision rows [1, 3, 224, 224]."""
    return preprocess_module(Modality.VISION).preprocess(rgb)[None]


def audio_rows(waveform: np.ndarray, sample_rate: float) -> np.ndarray:
    """Waveform [samples] or [samples, channels] -> one row per clip, [3, 1, 128, 204]."""
    return preprocess_module(Modality.AUDIO).preprocess(waveform, sample_rate)


def depth_rows(depth_m: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """Metric depth [H, W] -> depth rows [1, 1, 224, 224] (converted to disparity by the preprocessor)."""
    return preprocess_module(Modality.DEPTH).preprocess(depth_m, fx, baseline)[None]


def disparity_rows(disparity: np.ndarray) -> np.ndarray:
    """Disparity map [H, W] (already disparity) -> depth rows [1, 1, 224, 224]."""
    depth = preprocess_module(Modality.DEPTH)
    return depth.disparity_input(disparity, default_config(Modality.DEPTH))[None]


def thermal_rows(frame: np.ndarray) -> np.ndarray:
    """Thermal frame [H, W] -> thermal rows [1, 1, 224, 224]."""
    return preprocess_module(Modality.THERMAL).preprocess(frame)[None]


def imu_rows(samples: np.ndarray, sample_rate: float) -> np.ndarray:
    """IMU samples [N, 6] (ax, ay, az, gx, gy, gz) -> imu rows [1, 6, 2000]."""
    return preprocess_module(Modality.IMU).preprocess(samples, sample_rate)[None]


def text_rows(lines: Sequence[str]) -> np.ndarray:
    """Captions -> token rows int64 [N, 77]."""
    return preprocess_module(Modality.TEXT).preprocess(list(lines))


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """Outcome of building a calibration set."""

    path: Path
    up_to_date: bool
    rows: dict[str, dict[str, int]]  # modality -> {"calib": rows, "val": rows}
    samples: dict[str, int]  # modality -> number of samples (files, lines, derived items)
    skipped: list[Skipped]  # (file, reason) for every file that was not used

    @classmethod
    def from_manifest(cls, path: Path, manifest: Mapping[str, Any], up_to_date: bool) -> "BuildResult":
        mods = manifest["modalities"]
        return cls(
            path=path,
            up_to_date=up_to_date,
            rows={m: {s: int(e["shards"][s]["rows"]) for s in e["shards"]} for m, e in mods.items()},
            samples={m: len(e["samples"]) for m, e in mods.items()},
            skipped=[(str(f), str(r)) for f, r in manifest.get("skipped", [])],
        )

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "up_to_date": self.up_to_date, "rows": self.rows,
                "samples": self.samples, "skipped": [{"file": f, "reason": r} for f, r in self.skipped]}


def build_or_reuse(
    out: str | Path,
    *,
    name: str,
    created_by: str,
    note: str,
    modalities: Sequence[Modality],
    val_fraction: float,
    seed: int,
    inputs: Mapping[str, Any],
    produce: Callable[[SetWriter], list[Skipped]],
    extra: Mapping[str, Any] | None = None,
) -> BuildResult:
    """Write the set in ``out`` unless an intact set built from the same inputs is already there.

    ``inputs`` describes the sources (names and sha256s) and parameters; together with the
    preprocessing configs, split settings and edgebind version it forms the fingerprint that
    decides whether anything needs to be done. ``produce`` fills the writer and returns the
    skipped ``(file, reason)`` pairs.
    """
    from .. import __version__

    out = Path(out)
    records = {m.value: preprocess_record(m) for m in modalities}
    fp = fingerprint({"inputs": inputs, "preprocess": records, "val_fraction": float(val_fraction),
                      "seed": int(seed), "edgebind": __version__})
    if stored_fingerprint(out) == fp:
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
        result = BuildResult.from_manifest(out, manifest, up_to_date=True)
        logger.info("calibration set %s is up to date (sources and configs unchanged); nothing written", out)
        if result.skipped:
            logger.warning("%d file(s) were skipped when this set was built; see 'skipped' in %s",
                           len(result.skipped), out / MANIFEST_FILE)
        return result
    writer = SetWriter(out, name=name, created_by=f"edgebind {__version__} {created_by}", note=note,
                       val_fraction=val_fraction, seed=seed, inputs_fingerprint=fp, extra=extra)
    for m in modalities:
        writer.add_modality(m, records[m.value])
    skipped = produce(writer)
    manifest = writer.write(extra={"skipped": [[f, r] for f, r in skipped]})
    return BuildResult.from_manifest(out, manifest, up_to_date=False)
