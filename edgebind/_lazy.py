"""Optional dependencies: check without importing, import with a clear error naming the extra."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError


def is_available(module: str) -> bool:
    """True when ``module`` can be imported; never imports it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise ``MissingDependencyError`` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the module exists but one of *its* imports failed: show the real cause
        raise MissingDependencyError(module, extra, purpose) from exc
