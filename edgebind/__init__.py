"""edgebind: ImageBind-style multimodal embeddings from research checkpoint to robot.

Importing ``edgebind`` loads only the standard library and numpy; torch is imported only by the
host-side export modules (``edgebind.models``, ``edgebind.export``).
"""

from __future__ import annotations

from . import _logging  # noqa: F401  (installs the NullHandler)
from .errors import EdgebindError
from .modality import ALL_MODALITIES, Modality

__version__ = "0.1.0.dev0"

__all__ = ["ALL_MODALITIES", "EdgebindError", "Modality", "__version__"]
