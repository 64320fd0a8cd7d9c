"""The bundle manifest: one versioned ``manifest.json`` that describes every exported artifact.

Everything downstream (quantization, engine builds, the runtime) reads the manifest and re-derives
nothing. This module is on the device path: standard library and numpy-free, and never torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from .._io import atomic_open, sha256_file
from ..errors import ConfigError, ManifestError
from ..modality import Modality
from .schema import (
    DTYPES,
    PRECISIONS,
    RANDOM_INIT,
    SCHEMA_VERSION,
    FieldError,
    Record,
    check_nonnegative_int,
    check_object,
    check_relative_path,
    check_sha256,
    validate_with_jsonschema,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
Precision = Literal["fp32", "fp16", "int8"]

@dataclasses.dataclass(frozen=True, kw_only=True)
class CreatedBy(Record):
    """Versions of the tools that produced the bundle (None where a tool was not involved)."""

    edgebind: str
    torch: str | None = None
    onnx: str | None = None
    onnxruntime: str | None = None
    opset: int | None = None
    exporter: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec(Record):
    """One graph input or output. String dims are dynamic (``"batch"``); ints are fixed."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not self.name:
            raise FieldError(self, "name", "expected a non-empty tensor name")
        if not isinstance(self.shape, tuple) or not self.shape:
            raise FieldError(self, "shape", f"expected a non-empty list of dims, got {self.shape!r}")
        for dim in self.shape:
            if isinstance(dim, bool) or not (isinstance(dim, int) and dim > 0 or isinstance(dim, str) and dim):
                raise FieldError(
                    self, "shape", f"each dim must be a positive int or a dim name like 'batch', got {dim!r}"
                )
        if self.dtype not in DTYPES:
            raise FieldError(self, "dtype", f"expected one of {list(DTYPES)}, got {self.dtype!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Fidelity(Record):
    """How closely an artifact's outputs match a reference on ``n_samples`` inputs."""

    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    n_samples: int
    reference: str
    top1_agreement: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_abs_diff", "min_cosine", "mean_cosine", "top1_agreement"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise FieldError(self, name, f"expected a finite number, got {value!r}")
        if self.n_samples < 1:
            raise FieldError(self, "n_samples", f"expected at least 1, got {self.n_samples}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Artifact(Record):
    """One model file of a tower (and its external-data file), with checksums and how it was made.

    ``form`` says how it was produced: "fp32", "fp16", "int8-qdq", "int8-dynamic", ...
    ``provenance`` holds the export inputs (config hash, weights, opset, exporter) so a re-run can
    tell whether the file is up to date.
    """

    precision: Precision
    form: str
    file: str
    sha256: str
    size_bytes: int
    data_file: str | None = None
    data_sha256: str | None = None
    data_size_bytes: int | None = None
    backends: tuple[str, ...] = ()
    quantization: dict[str, Any] = dataclasses.field(default_factory=dict)
    fidelity: Fidelity | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise FieldError(self, "precision", f"expected one of {list(PRECISIONS)}, got {self.precision!r}")
        if not self.form:
            raise FieldError(self, "form", "expected a non-empty form such as 'fp32' or 'int8-qdq'")
        check_relative_path(self, "file", self.file)
        check_sha256(self, "sha256", self.sha256)
        check_nonnegative_int(self, "size_bytes", self.size_bytes)
        check_relative_path(self, "data_file", self.data_file, optional=True)
        check_sha256(self, "data_sha256", self.data_sha256, optional=True)
        check_nonnegative_int(self, "data_size_bytes", self.data_size_bytes, optional=True)
        has_data = [self.data_file is not None, self.data_sha256 is not None, self.data_size_bytes is not None]
        if any(has_data) and not all(has_data):
            raise FieldError(self, "data_file", "data_file, data_sha256 and data_size_bytes must be given together")
        object.__setattr__(self, "backends", tuple(self.backends))
        object.__setattr__(self, "quantization", check_object(self, "quantization", self.quantization))
        object.__setattr__(self, "provenance", check_object(self, "provenance", self.provenance))

    def files(self) -> list[tuple[str, str, int]]:
        """(relative path, sha256, size) of the model file and, if any, its external-data file."""
        out = [(self.file, self.sha256, self.size_bytes)]
        if self.data_file is not None:
            out.append((self.data_file, self.data_sha256, self.data_size_bytes))  # type: ignore[arg-type]
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class TowerRecord(Record):
    """One modality encoder: its graph interface, temperature, preprocessing and artifacts."""

    input: TensorSpec
    output: TensorSpec
    logit_scale: float
    video: bool = False
    preprocess: dict[str, Any] = dataclasses.field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise FieldError(self, "logit_scale", f"expected a positive finite number, got {self.logit_scale!r}")
        object.__setattr__(self, "preprocess", check_object(self, "preprocess", self.preprocess))
        object.__setattr__(self, "artifacts", tuple(self.artifacts))
        seen: set[tuple[str, str]] = set()
        for i, art in enumerate(self.artifacts):
            if not isinstance(art, Artifact):
                raise FieldError(self, f"artifacts[{i}]", f"expected an Artifact, got {type(art).__name__}")
            if (art.precision, art.form) in seen:
                duplicate = f"duplicate artifact precision={art.precision!r} form={art.form!r}"
                raise FieldError(self, f"artifacts[{i}]", duplicate)
            seen.add((art.precision, art.form))

    def artifact(self, precision: str, form: str | None = None) -> Artifact:
        """The artifact of ``precision`` (and ``form``, required when several share the precision)."""
        matches = [a for a in self.artifacts if a.precision == precision and (form is None or a.form == form)]
        if len(matches) == 1:
            return matches[0]
        have = [f"{a.precision}/{a.form}" for a in self.artifacts] or "none"
        if not matches:
            raise ManifestError(f"no artifact with precision={precision!r} form={form!r}; this tower has {have}")
        raise ManifestError(f"several artifacts with precision={precision!r} ({have}); pass form= to choose one")

    def with_artifact(self, artifact: Artifact) -> "TowerRecord":
        """A copy with ``artifact`` added, replacing any artifact of the same precision and form."""
        kept = [a for a in self.artifacts if (a.precision, a.form) != (artifact.precision, artifact.form)]
        return dataclasses.replace(self, artifacts=(*kept, artifact))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelBank(Record):
    """Precomputed label embeddings (e.g. text prompts) shipped with the bundle for zero-shot use."""

    file: str
    sha256: str
    size_bytes: int
    modality: str
    n_labels: int
    embed_dim: int
    description: str = ""

    def __post_init__(self) -> None:
        check_relative_path(self, "file", self.file)
        check_sha256(self, "sha256", self.sha256)
        check_nonnegative_int(self, "size_bytes", self.size_bytes)
        try:
            object.__setattr__(self, "modality", Modality.parse(self.modality).value)
        except ConfigError as exc:
            raise FieldError(self, "modality", str(exc)) from None
        for name in ("n_labels", "embed_dim"):
            if getattr(self, name) < 1:
                raise FieldError(self, name, f"expected a positive integer, got {getattr(self, name)}")

    def files(self) -> list[tuple[str, str, int]]:
        return [(self.file, self.sha256, self.size_bytes)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest(Record):
    """A whole bundle. ``towers`` is keyed by modality value ("vision", "text", ...)."""

    schema_version: int = SCHEMA_VERSION
    model: str
    model_config: dict[str, Any]
    checkpoint_sha256: str
    seed: int | None = None
    created_by: CreatedBy
    towers: dict[str, TowerRecord] = dataclasses.field(default_factory=dict)
    label_bank: LabelBank | None = None

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            reason = f"unsupported version {self.schema_version!r}; this edgebind reads {SCHEMA_VERSION}"
            raise FieldError(self, "schema_version", reason)
        if not self.model:
            raise FieldError(self, "model", "expected a model name such as 'imagebind_huge'")
        object.__setattr__(self, "model_config", check_object(self, "model_config", self.model_config))
        if self.checkpoint_sha256 == RANDOM_INIT:
            if self.seed is None:
                raise FieldError(self, "seed", "a random-init bundle must record the seed it was built with")
        else:
            check_sha256(self, "checkpoint_sha256", self.checkpoint_sha256)
        if not isinstance(self.towers, Mapping):
            raise FieldError(self, "towers", f"expected an object keyed by modality, got {type(self.towers).__name__}")
        towers: dict[str, TowerRecord] = {}
        for key, tower in self.towers.items():
            try:
                name = Modality.parse(key).value
            except ConfigError as exc:
                raise FieldError(self, "towers", str(exc)) from None
            if not isinstance(tower, TowerRecord):
                raise FieldError(self, f"towers.{name}", f"expected a TowerRecord, got {type(tower).__name__}")
            towers[name] = tower
        object.__setattr__(self, "towers", towers)
        seen: dict[str, str] = {}
        for owner, path in self._file_owners():
            if path in seen:
                raise FieldError(self, "towers", f"file {path!r} is listed twice ({seen[path]} and {owner})")
            seen[path] = owner

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | None = None) -> "Manifest":
        where = where or "manifest"
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{where}.schema_version: unsupported version {version!r}; this edgebind reads {SCHEMA_VERSION} "
                "(re-export the bundle, or upgrade edgebind if it was written by a newer one)"
            )
        towers_data = data.get("towers", {})
        if not isinstance(towers_data, Mapping):
            got = type(towers_data).__name__
            raise ManifestError(f"{where}.towers: expected an object keyed by modality, got {got}")
        towers = {}
        for key, value in towers_data.items():
            try:
                name = Modality.parse(key).value
            except ConfigError as exc:
                raise ManifestError(f"{where}.towers: {exc}") from None
            towers[name] = TowerRecord.from_dict(value, where=f"{where}.towers.{key}")
        rest = {k: v for k, v in data.items() if k != "towers"}
        manifest = super().from_dict(rest, where=where)
        return dataclasses.replace(manifest, towers=towers)

    def tower(self, modality: str | Modality) -> TowerRecord:
        """The record of one modality; ManifestError naming the bundle's towers if it has none."""
        name = Modality.parse(modality).value
        if name not in self.towers:
            raise ManifestError(f"this bundle has no {name!r} tower; it has {sorted(self.towers) or 'none'}")
        return self.towers[name]

    def artifact(self, modality: str | Modality, precision: str, form: str | None = None) -> Artifact:
        """The artifact of one tower at ``precision`` (``form`` picks among e.g. int8-qdq / int8-dynamic)."""
        try:
            return self.tower(modality).artifact(precision, form)
        except ManifestError as exc:
            raise ManifestError(f"tower {Modality.parse(modality).value!r}: {exc}") from None

    def with_tower(self, modality: str | Modality, tower: TowerRecord) -> "Manifest":
        """A copy with ``tower`` set for ``modality`` (added or replaced)."""
        towers = dict(self.towers)
        towers[Modality.parse(modality).value] = tower
        return dataclasses.replace(self, towers=towers)

    def _file_owners(self) -> Iterable[tuple[str, str]]:
        for name, tower in self.towers.items():
            for art in tower.artifacts:
                for path, _, _ in art.files():
                    yield f"{name}/{art.precision}/{art.form}", path
        if self.label_bank is not None:
            yield "label_bank", self.label_bank.file


def _manifest_path(path_or_dir: str | os.PathLike[str]) -> Path:
    path = Path(path_or_dir)
    return path / MANIFEST_NAME if path.is_dir() else path


def validate_manifest_dict(data: Any, *, source: str = "manifest") -> Manifest:
    """Validate a decoded JSON document and return the Manifest (ManifestError naming the field)."""
    if isinstance(data, Mapping) and data.get("schema_version") == SCHEMA_VERSION:
        validate_with_jsonschema(data, source=source)
    return Manifest.from_dict(data, where=source)


def load_manifest(path_or_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``manifest.json`` (give the bundle folder or the file itself)."""
    path = _manifest_path(path_or_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest here (expected {MANIFEST_NAME} in the bundle folder)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return validate_manifest_dict(data, source=str(path))


def save_manifest(manifest: Manifest, directory: str | os.PathLike[str]) -> Path:
    """Atomically write ``manifest.json`` into ``directory``; returns its path.

    The document is re-validated first, so a manifest that this edgebind could not read back is
    never written.
    """
    if not isinstance(manifest, Manifest):
        raise ManifestError(f"save_manifest: expected a Manifest, got {type(manifest).__name__}")
    data = manifest.to_dict()
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest is not plain JSON (a preprocess/quantization dict holds {exc})") from None
    validate_manifest_dict(json.loads(text), source="manifest to save")
    path = Path(directory) / MANIFEST_NAME
    with atomic_open(path, "w") as fh:
        fh.write(text + "\n")
    logger.debug("wrote %s (%d towers)", path, len(manifest.towers))
    return path


def verify_files(
    manifest: Manifest,
    directory: str | os.PathLike[str],
    *,
    modalities: Iterable[str | Modality] | None = None,
) -> list[Path]:
    """Check that every file the manifest lists exists with the recorded size and sha256.

    Limit the check to some towers with ``modalities``. Returns the verified paths; raises
    ManifestError naming the first missing or mismatching file.
    """
    directory = Path(directory)
    wanted = None if modalities is None else {Modality.parse(m).value for m in modalities}
    entries: list[tuple[str, str, int]] = []
    for name, tower in manifest.towers.items():
        if wanted is None or name in wanted:
            for art in tower.artifacts:
                entries += art.files()
    if manifest.label_bank is not None and wanted is None:
        entries += manifest.label_bank.files()
    verified = []
    for rel, digest, size in entries:
        path = directory / rel
        if not path.is_file():
            raise ManifestError(f"{path}: listed in the manifest but missing")
        actual_size = path.stat().st_size
        if actual_size != size:
            raise ManifestError(f"{path}: size {actual_size} bytes, manifest says {size} (file changed or truncated)")
        actual = sha256_file(path)
        if actual != digest:
            raise ManifestError(f"{path}: sha256 {actual} does not match the manifest's {digest}")
        verified.append(path)
    return verified
