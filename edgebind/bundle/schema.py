"""What a valid ``manifest.json`` is: its JSON Schema (draft 2020-12) and the field checks of its records.

The dataclasses in :mod:`edgebind.bundle.manifest` (built on ``Record`` and the ``check_*`` helpers
below) are the authority and always validate. ``MANIFEST_SCHEMA`` is the published contract for
other tools; ``validate_with_jsonschema`` also checks a document against it when the optional
``jsonschema`` package is installed (it is not a dependency). Standard library only.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, TypeVar

from .._config import ConfigMixin
from .._lazy import is_available
from ..errors import ConfigError, ManifestError
from ..modality import ALL_MODALITIES

SCHEMA_VERSION = 1
"""The manifest layout this edgebind writes and reads. Bump it on any incompatible change."""

PRECISIONS = ("fp32", "fp16", "int8")
DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
SHA256_PATTERN = "^[0-9a-f]{64}$"
RANDOM_INIT = "random-init"
# A bundle-relative POSIX path: no leading '/', no '\\', no '..' component.
RELATIVE_PATH_PATTERN = r"^(?!/)(?!.*\\)(?!(.*/)?\.\.(/|$))[^\x00]+$"

_NUMBER = {"type": "number"}
_OBJECT = {"type": "object"}
_HEX = {"type": "string", "pattern": SHA256_PATTERN}
_PATH = {"type": "string", "pattern": RELATIVE_PATH_PATTERN}


def _record(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _all_or_none(names: list[str]) -> list[dict[str, Any]]:
    """Rules saying: if any of ``names`` is set (not null), all of them must be set."""
    not_null = {"not": {"type": "null"}}
    return [
        {
            "if": {"properties": {name: not_null}, "required": [name]},
            "then": {"properties": {other: not_null for other in names}, "required": names},
        }
        for name in names
    ]


MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://edgebind.dev/schemas/manifest-v1.json",
    "title": "edgebind bundle manifest",
    **_record(
        {
            "schema_version": {"const": SCHEMA_VERSION},
            "model": {"type": "string", "minLength": 1},
            "model_config": _OBJECT,
            "checkpoint_sha256": {"anyOf": [_HEX, {"const": RANDOM_INIT}]},
            "seed": {"type": ["integer", "null"]},
            "created_by": {"$ref": "#/$defs/created_by"},
            "towers": {
                "type": "object",
                "propertyNames": {"enum": [m.value for m in ALL_MODALITIES]},
                "additionalProperties": {"$ref": "#/$defs/tower"},
            },
            "label_bank": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/label_bank"}]},
        },
        ["schema_version", "model", "model_config", "checkpoint_sha256", "created_by"],
    ),
    # A random-init bundle must say which seed made it.
    "if": {"properties": {"checkpoint_sha256": {"const": RANDOM_INIT}}, "required": ["checkpoint_sha256"]},
    "then": {"properties": {"seed": {"type": "integer"}}, "required": ["seed"]},
    "$defs": {
        "created_by": _record(
            {
                "edgebind": {"type": "string"},
                "torch": {"type": ["string", "null"]},
                "onnx": {"type": ["string", "null"]},
                "onnxruntime": {"type": ["string", "null"]},
                "opset": {"type": ["integer", "null"], "minimum": 1},
                "exporter": {"type": ["string", "null"]},
            },
            ["edgebind"],
        ),
        "tensor": _record(
            {
                "name": {"type": "string", "minLength": 1},
                "shape": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1}]},
                },
                "dtype": {"enum": list(DTYPES)},
            },
            ["name", "shape", "dtype"],
        ),
        "fidelity": _record(
            {
                "max_abs_diff": _NUMBER,
                "min_cosine": _NUMBER,
                "mean_cosine": _NUMBER,
                "top1_agreement": {"type": ["number", "null"]},
                "n_samples": {"type": "integer", "minimum": 1},
                "reference": {"type": "string", "minLength": 1},
            },
            ["max_abs_diff", "min_cosine", "mean_cosine", "n_samples", "reference"],
        ),
        "artifact": _record(
            {
                "precision": {"enum": list(PRECISIONS)},
                "form": {"type": "string", "minLength": 1},
                "file": _PATH,
                "sha256": _HEX,
                "size_bytes": {"type": "integer", "minimum": 0},
                "data_file": {"anyOf": [{"type": "null"}, _PATH]},
                "data_sha256": {"anyOf": [{"type": "null"}, _HEX]},
                "data_size_bytes": {"type": ["integer", "null"], "minimum": 0},
                "backends": {"type": "array", "items": {"type": "string"}},
                "quantization": _OBJECT,
                "fidelity": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/fidelity"}]},
                "provenance": _OBJECT,
            },
            ["precision", "form", "file", "sha256", "size_bytes"],
        )
        | {"allOf": _all_or_none(["data_file", "data_sha256", "data_size_bytes"])},
        "tower": _record(
            {
                "input": {"$ref": "#/$defs/tensor"},
                "output": {"$ref": "#/$defs/tensor"},
                "logit_scale": {"type": "number", "exclusiveMinimum": 0},
                "video": {"type": "boolean"},
                "preprocess": _OBJECT,
                "artifacts": {"type": "array", "items": {"$ref": "#/$defs/artifact"}},
            },
            ["input", "output", "logit_scale"],
        ),
        "label_bank": _record(
            {
                "file": _PATH,
                "sha256": _HEX,
                "size_bytes": {"type": "integer", "minimum": 0},
                "modality": {"enum": [m.value for m in ALL_MODALITIES]},
                "n_labels": {"type": "integer", "minimum": 1},
                "embed_dim": {"type": "integer", "minimum": 1},
                "description": {"type": "string"},
            },
            ["file", "sha256", "size_bytes", "modality", "n_labels", "embed_dim"],
        ),
    },
}


def validate_with_jsonschema(data: Mapping[str, Any], *, source: str = "manifest") -> bool:
    """Check ``data`` against :data:`MANIFEST_SCHEMA` if ``jsonschema`` is installed.

    Returns False (and checks nothing) when it is not installed; the dataclass validation still runs.
    Raises ``ManifestError`` naming the JSON path of the first problem found.
    """
    if not is_available("jsonschema"):
        return False
    import jsonschema  # optional; imported only when present

    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)
    first = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if first is not None:
        where = ".".join(str(p) for p in first.absolute_path) or "(top level)"
        raise ManifestError(f"{source}: field {where}: {first.message}")
    return True


# Building blocks of the manifest records (edgebind.bundle.manifest): every problem is a
# ManifestError that names the JSON path of the offending field.

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
R = TypeVar("R", bound="Record")


class FieldError(ManifestError):
    """A value failed a check in ``__post_init__``; ``from_dict`` prefixes it with the JSON path."""

    def __init__(self, record: object, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{type(record).__name__}.{field}: {reason}")


class Record(ConfigMixin):
    """ConfigMixin with required-field checks, recursive ``to_dict`` and ManifestError on every problem."""

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], *, where: str | None = None) -> R:
        where = where or cls.__name__
        if isinstance(data, Mapping):
            required = [
                f.name
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
            missing = [name for name in required if name not in data]
            if missing:
                raise ManifestError(f"{where}: missing required field(s) {missing}")
        try:
            return super().from_dict(data, where=where)
        except FieldError as exc:
            raise ManifestError(f"{where}.{exc.field}: {exc.reason}") from None
        except ConfigError as exc:
            raise ManifestError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def to_json(value: Any) -> Any:
    if isinstance(value, ConfigMixin):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def check_sha256(record: object, field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not _HEX64.match(value):
        raise FieldError(record, field, f"expected 64 lowercase hex digits (a sha256), got {value!r}")


def check_relative_path(record: object, field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        raise FieldError(record, field, f"expected a file name relative to the bundle folder, got {value!r}")
    parts = value.split("/")
    if value.startswith("/") or "\\" in value or ".." in parts or "" in parts:
        rule = "no leading '/', no '..' or empty parts, no '\\'"
        raise FieldError(record, field, f"expected a relative path inside the bundle folder ({rule}), got {value!r}")


def check_object(record: object, field: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise FieldError(record, field, f"expected a JSON object with string keys, got {type(value).__name__}")
    return dict(value)


def check_nonnegative_int(record: object, field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(record, field, f"expected a non-negative integer, got {value!r}")
