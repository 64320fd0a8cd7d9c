"""Exception hierarchy. Every error edgebind raises on purpose is an ``EdgebindError``.

Messages name the file, field or argument at fault and the value that was expected, so a user
can fix the input without reading the source.
"""

from __future__ import annotations


class EdgebindError(Exception):
    """Base class of all edgebind errors."""


class ConfigError(EdgebindError, ValueError):
    """A configuration or argument has an unknown key or an invalid value."""


class MissingDependencyError(EdgebindError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str | None = None, purpose: str | None = None):
        self.module = module
        self.extra = extra
        hint = f"pip install 'edgebind[{extra}]'" if extra else f"pip install {module}"
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"Python module {module!r} is not installed{why}; install it with: {hint}")


class PreprocessError(EdgebindError, ValueError):
    """Input data given to a preprocessing function has the wrong shape, dtype or values."""


class CheckpointError(EdgebindError):
    """A checkpoint file is missing, unreadable, truncated, or does not match the model."""


class DownloadError(EdgebindError):
    """Downloading a file failed (network, size or checksum mismatch)."""


class ModelError(EdgebindError, ValueError):
    """Unknown model name, bad constructor override, or a wrong input to a model."""


class ExportError(EdgebindError):
    """ONNX export failed or the exported model disagrees with PyTorch."""


class CalibrationError(EdgebindError):
    """Calibration data is missing, empty or inconsistent."""


class ManifestError(EdgebindError):
    """A bundle manifest is missing, malformed, of an unsupported version, or does not match its files."""


class EngineError(EdgebindError):
    """An inference engine could not be built, loaded or run."""


class StreamError(EdgebindError):
    """A live or replayed sensor stream failed."""
