"""Calibration set on disk: shards, manifest, the up-to-date check and the ``CalibrationSet`` reader.

A calibration set is a folder::

    manifest.json            # written last; describes everything below
    <modality>.calib.npy     # stacked model inputs used to calibrate INT8 ranges
    <modality>.val.npy       # held-out model inputs used to measure FP16/INT8 fidelity

Each shard holds one row per model input (an audio file contributes one row per clip). The manifest
records, per modality, the preprocessing module and config, the input shape and dtype, the shard
files with their sha256, and every sample with its source, sha256, provenance, licence, split and the
``[start, stop)`` rows it produced in its split's shard. It also stores a fingerprint of the inputs
(source hashes, configs, split settings), so a re-run over unchanged sources writes nothing.

Splits are by sample, never by row, so the clips of one audio file never straddle calib and val.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._io import atomic_open, atomic_write_json, sha256_file
from ..errors import CalibrationError, ConfigError
from ..modality import Modality

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "SPLITS",
    "CalibrationReader",
    "CalibrationSet",
    "PreparedSample",
    "SetWriter",
    "assign_splits",
    "fingerprint",
    "shard_name",
    "stored_fingerprint",
]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPLITS = ("calib", "val")


def shard_name(modality: Modality | str, split: str) -> str:
    """File name of one shard, e.g. ``audio.calib.npy``."""
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    return f"{Modality.parse(modality).value}.{split}.npy"


def fingerprint(inputs: Any) -> str:
    """sha256 of a JSON-serialisable description of everything a set's content depends on."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def assign_splits(keys: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Deterministic calib/val split of sample ``keys``.

    Samples are ordered by ``sha256(seed:key)`` and the first ``round(n * val_fraction)`` go to val
    (at least one when ``val_fraction > 0`` and n >= 2; calib always keeps at least one). Hashing
    rather than shuffling keeps existing samples on their side when files are added or removed.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
    unique = list(dict.fromkeys(keys))
    if len(unique) != len(keys):
        raise CalibrationError(f"duplicate sample keys: {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
    n = len(unique)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    order = sorted(unique, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode("utf-8")).hexdigest())
    val = set(order[:n_val])
    return {k: ("val" if k in val else "calib") for k in unique}


@dataclasses.dataclass
class PreparedSample:
    """One source item after preprocessing: its model-input rows plus what the manifest records."""

    source: str
    sha256: str
    rows: np.ndarray
    provenance: str
    licence: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _ModalityBuffer:
    preprocess: dict[str, Any]
    input_shape: tuple[int, ...] | None = None  # set by the first sample: the preprocessor defines it
    dtype: np.dtype | None = None
    samples: list[PreparedSample] = dataclasses.field(default_factory=list)


class SetWriter:
    """Collects preprocessed samples per modality, splits them and writes shards and manifest atomically."""

    def __init__(self, out: str | Path, *, name: str, created_by: str, note: str,
                 val_fraction: float, seed: int, inputs_fingerprint: str,
                 extra: Mapping[str, Any] | None = None):
        assign_splits([], val_fraction, seed)  # validates val_fraction early
        self.out = Path(out)
        self._header = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "created_by": created_by,
            "note": note,
            "split": {"val_fraction": float(val_fraction), "seed": int(seed), "unit": "sample"},
            "fingerprint": inputs_fingerprint,
            **dict(extra or {}),
        }
        self._val_fraction = float(val_fraction)
        self._seed = int(seed)
        self._buffers: dict[Modality, _ModalityBuffer] = {}

    def add_modality(self, modality: Modality | str, preprocess: Mapping[str, Any]) -> None:
        """Declare a modality with its preprocessing record (module, function, config dict)."""
        self._buffers[Modality.parse(modality)] = _ModalityBuffer(dict(preprocess))

    def add(self, modality: Modality | str, sample: PreparedSample) -> None:
        """Add one sample ``rows [k, *input_shape]``; every sample of a modality must share shape and dtype."""
        m = Modality.parse(modality)
        if m not in self._buffers:
            raise CalibrationError(f"modality {m.value!r} was not declared with add_modality()")
        buf = self._buffers[m]
        rows = np.asarray(sample.rows)
        if rows.ndim < 2 or rows.shape[0] < 1:
            raise CalibrationError(f"{m.value} sample {sample.source}: expected rows [k>=1, ...], got {rows.shape}")
        if buf.input_shape is None:
            buf.input_shape, buf.dtype = tuple(rows.shape[1:]), rows.dtype
        if rows.shape[1:] != buf.input_shape or rows.dtype != buf.dtype:
            raise CalibrationError(f"{m.value} sample {sample.source}: rows {rows.dtype}{list(rows.shape)}, "
                                   f"expected {buf.dtype}[k, {', '.join(map(str, buf.input_shape))}]")
        buf.samples.append(sample)

    def counts(self) -> dict[Modality, int]:
        """Samples collected so far per declared modality."""
        return {m: len(b.samples) for m, b in self._buffers.items()}

    def write(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write every non-empty modality's shards, then the manifest (plus ``extra`` fields); return it."""
        modalities: dict[str, Any] = {}
        for m, buf in self._buffers.items():
            if not buf.samples:
                logger.warning("calibration set %s: no usable %s samples; modality omitted", self.out, m.value)
                continue
            modalities[m.value] = self._write_modality(m, buf)
        if not modalities:
            raise CalibrationError(f"calibration set {self.out}: no usable samples in any modality")
        manifest = {**self._header, **dict(extra or {}), "modalities": modalities}
        atomic_write_json(self.out / MANIFEST_FILE, manifest)
        self._remove_stale_shards(set(modalities))
        return manifest

    def _write_modality(self, m: Modality, buf: _ModalityBuffer) -> dict[str, Any]:
        split_of = assign_splits([s.source for s in buf.samples], self._val_fraction, self._seed)
        records: list[dict[str, Any]] = []
        shards: dict[str, Any] = {}
        for split in SPLITS:
            chosen = [s for s in buf.samples if split_of[s.source] == split]
            start = 0
            for s in chosen:
                stop = start + s.rows.shape[0]
                records.append({"source": s.source, "sha256": s.sha256, "provenance": s.provenance,
                                "licence": s.licence, "split": split, "rows": [start, stop], **s.extra})
                start = stop
            path = self.out / shard_name(m, split)
            assert buf.input_shape is not None and buf.dtype is not None  # set by the first add()
            _write_stacked(path, [s.rows for s in chosen], buf.input_shape, buf.dtype)
            shards[split] = {"file": path.name, "rows": start, "sha256": sha256_file(path)}
        logger.info("calibration set %s: %s calib %d rows, val %d rows (%d samples)", self.out, m.value,
                    shards["calib"]["rows"], shards["val"]["rows"], len(buf.samples))
        return {
            "preprocess": buf.preprocess,
            "input": {"shape": list(buf.input_shape or ()), "dtype": np.dtype(buf.dtype).name},
            "shards": shards,
            "samples": records,
        }

    def _remove_stale_shards(self, kept: set[str]) -> None:
        for m in Modality:
            if m.value in kept:
                continue
            for split in SPLITS:
                stale = self.out / shard_name(m, split)
                if stale.exists():
                    logger.info("removing stale shard %s (modality no longer in the set)", stale)
                    stale.unlink()


def _write_stacked(path: Path, arrays: list[np.ndarray], row_shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Write ``concatenate(arrays)`` as a .npy file without building the concatenation in memory."""
    total = sum(a.shape[0] for a in arrays)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (total, *row_shape)}
    with atomic_open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for a in arrays:
            fh.write(np.ascontiguousarray(a, dtype=dtype).tobytes())


def _read_manifest(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CalibrationError(f"calibration set folder {folder} does not exist")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise CalibrationError(f"calibration set {folder} has no {MANIFEST_FILE}; build it with `edgebind calibrate`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise CalibrationError(f"{path}: schema_version {version!r} is not supported; expected {SCHEMA_VERSION}")
    if not isinstance(manifest.get("modalities"), dict):
        raise CalibrationError(f"{path}: field 'modalities' must be an object")
    return manifest


def stored_fingerprint(folder: str | Path) -> str | None:
    """The input fingerprint of an existing, intact set in ``folder``; None when absent or damaged.

    Intact means the manifest parses and every shard it lists exists with the recorded sha256.
    """
    folder = Path(folder)
    try:
        manifest = _read_manifest(folder)
    except CalibrationError:
        return None
    for entry in manifest["modalities"].values():
        for shard in entry.get("shards", {}).values():
            path = folder / str(shard.get("file", ""))
            if not path.is_file() or sha256_file(path) != shard.get("sha256"):
                logger.info("calibration set %s: shard %s missing or changed; rebuilding", folder, path.name)
                return None
    value = manifest.get("fingerprint")
    return value if isinstance(value, str) else None


class CalibrationReader:
    """Batches of one shard as ``{input_name: array}`` feeds.

    Implements onnxruntime's ``CalibrationDataReader`` protocol by duck typing (``get_next`` returns
    a feed or None at the end; ``rewind``; ``__len__`` and ``set_range`` in batches; iteration), so
    onnxruntime is not imported here. The last batch may be smaller than ``batch_size``.
    """

    def __init__(self, data: np.ndarray, input_name: str, batch_size: int = 1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if not input_name:
            raise ConfigError("input_name: expected the model input's name, got an empty string")
        self._data = data
        self.input_name = input_name
        self.batch_size = batch_size
        self._range = (0, len(self))
        self._next = 0

    def __len__(self) -> int:
        return -(-self._data.shape[0] // self.batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None when the current range is exhausted."""
        if self._next >= self._range[1]:
            return None
        start = self._next * self.batch_size
        self._next += 1
        return {self.input_name: np.array(self._data[start:start + self.batch_size])}

    def rewind(self) -> None:
        """Start again from the first batch of the current range."""
        self._next = self._range[0]

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict to batches ``[start_index, end_index)`` (used by ORT's CalibStridedMinMax) and rewind."""
        n = len(self)
        if not 0 <= start_index <= end_index:
            raise ConfigError(f"set_range: expected 0 <= start_index <= end_index, got {start_index}, {end_index}")
        self._range = (start_index, min(end_index, n))
        self.rewind()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


class CalibrationSet:
    """Read-only view of a calibration set folder. Open with ``CalibrationSet.open(path)``."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path) -> "CalibrationSet":
        """Open the set in ``path``; raises CalibrationError when the folder or manifest is missing or bad."""
        folder = Path(path)
        return cls(folder, _read_manifest(folder))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """Modalities present in the set, in manifest order."""
        return tuple(Modality.parse(m) for m in self.manifest["modalities"])

    def entry(self, modality: Modality | str) -> dict[str, Any]:
        """The manifest entry of ``modality`` (preprocess record, input spec, shards, samples)."""
        m = Modality.parse(modality)
        entry = self.manifest["modalities"].get(m.value)
        if entry is None:
            have = ", ".join(x.value for x in self.modalities) or "none"
            raise CalibrationError(f"calibration set {self.path} has no {m.value!r} data (it has: {have})")
        return entry

    def input_shape(self, modality: Modality | str) -> tuple[int, ...]:
        """Shape of one model-input row, e.g. ``(3, 224, 224)`` for vision."""
        return tuple(self.entry(modality)["input"]["shape"])

    def samples(self, modality: Modality | str, split: str | None = None) -> list[dict[str, Any]]:
        """Sample records (source, sha256, provenance, licence, split, rows), optionally of one split."""
        records = self.entry(modality)["samples"]
        return [r for r in records if split is None or r["split"] == split]

    def shard(self, modality: Modality | str, split: str) -> np.ndarray:
        """All rows of one split as a read-only memory-mapped array ``[rows, *input_shape]``."""
        m = Modality.parse(modality)
        info = self.entry(m)["shards"].get(split) if split in SPLITS else None
        if info is None:
            raise CalibrationError(f"calibration set {self.path}: no {split!r} shard for {m.value}; "
                                   f"expected one of {list(SPLITS)}")
        if int(info["rows"]) == 0:
            raise CalibrationError(f"calibration set {self.path}: the {split} split of {m.value} is empty"
                                   + ("; rebuild with a val_fraction > 0 and at least 2 samples" if split == "val" else ""))
        path = self.path / info["file"]
        if not path.is_file():
            raise CalibrationError(f"calibration set {self.path}: shard {path.name} listed in the manifest is missing")
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{path}: unreadable shard ({exc})") from None
        spec = self.entry(m)["input"]
        expected = (int(info["rows"]), *spec["shape"])
        if data.shape != expected or data.dtype != np.dtype(spec["dtype"]):
            raise CalibrationError(f"{path}: holds {data.dtype}{list(data.shape)}, manifest says "
                                   f"{spec['dtype']}{list(expected)}; rebuild the set")
        return data

    def calib(self, modality: Modality | str) -> np.ndarray:
        """Calibration rows of ``modality`` ``[rows, *input_shape]`` (read-only memory map)."""
        return self.shard(modality, "calib")

    def val(self, modality: Modality | str) -> np.ndarray:
        """Held-out validation rows of ``modality`` (read-only memory map)."""
        return self.shard(modality, "val")

    def reader(self, modality: Modality | str, input_name: str, batch_size: int = 1,
               split: str = "calib") -> CalibrationReader:
        """An onnxruntime-compatible ``CalibrationDataReader`` over one split of ``modality``."""
        return CalibrationReader(self.shard(modality, split), input_name, batch_size)

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest; raises CalibrationError on a mismatch."""
        for m in self.modalities:
            for split, info in self.entry(m)["shards"].items():
                path = self.path / info["file"]
                if not path.is_file() or sha256_file(path) != info["sha256"]:
                    raise CalibrationError(f"calibration set {self.path}: shard {info['file']} is missing or "
                                           "does not match the sha256 in the manifest")
