"""ONNX export of ImageBind towers (host side: needs the ``export`` extra, i.e. torch and onnx).

``export_model`` is the one call behind ``edgebind export`` for fp32: it exports the requested
towers one at a time and writes the bundle's ``manifest.json``. ``export_tower`` exports a single
tower of an already built model; ``checks`` holds the validity and parity checks. Importing this
package does not import torch; the functions do on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .onnx_export import artifact_file_name, export_model, export_tower, tower_input_spec

__all__ = ["artifact_file_name", "export_model", "export_tower", "tower_input_spec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from .._lazy import require

        require("torch", extra="export", purpose="ONNX export")
        require("onnx", extra="export", purpose="ONNX export")
        from . import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
