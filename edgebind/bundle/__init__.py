"""Bundles: a folder of exported artifacts described by one versioned ``manifest.json``.

Device-side: imports only the standard library (never torch).
"""

from __future__ import annotations

from .manifest import (
    MANIFEST_NAME,
    Artifact,
    CreatedBy,
    Fidelity,
    LabelBank,
    Manifest,
    TensorSpec,
    TowerRecord,
    load_manifest,
    save_manifest,
    validate_manifest_dict,
    verify_files,
)
from .schema import MANIFEST_SCHEMA, RANDOM_INIT, SCHEMA_VERSION

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "RANDOM_INIT",
    "SCHEMA_VERSION",
    "Artifact",
    "CreatedBy",
    "Fidelity",
    "LabelBank",
    "Manifest",
    "TensorSpec",
    "TowerRecord",
    "load_manifest",
    "save_manifest",
    "validate_manifest_dict",
    "verify_files",
]
