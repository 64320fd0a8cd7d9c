"""The PyTorch ImageBind model family (host side: needs the ``export`` extra, i.e. torch).

``list_models``/``get_config`` and ``ImageBindConfig`` are torch-free; ``build`` and
``ImageBindModel`` import torch on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import IMAGEBIND_HUGE, IMAGEBIND_TINY, OVERRIDABLE_FIELDS, ImageBindConfig, get_config, list_models

if TYPE_CHECKING:
    from .imagebind import ImageBindModel, build

__all__ = [
    "IMAGEBIND_HUGE",
    "IMAGEBIND_TINY",
    "OVERRIDABLE_FIELDS",
    "ImageBindConfig",
    "ImageBindModel",
    "build",
    "get_config",
    "list_models",
]

_TORCH_EXPORTS = {"ImageBindModel", "build"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_EXPORTS:
        from .._lazy import require

        require("torch", extra="export", purpose="the PyTorch ImageBind models")
        from . import imagebind

        return getattr(imagebind, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
