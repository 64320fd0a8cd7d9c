"""Input validation shared by the preprocessing functions. Errors name the argument and what was expected."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..errors import PreprocessError


def as_array(
    x: object,
    name: str,
    *,
    ndim: int | Iterable[int] | None = None,
    kinds: str = "uif",
    allow_empty: bool = False,
) -> np.ndarray:
    """Return ``x`` as an ndarray after checking its rank, dtype kind, emptiness and finiteness.

    ``kinds`` is a string of numpy dtype kinds accepted ('u' unsigned, 'i' signed, 'f' float, 'b' bool).
    """
    if x is None:
        raise PreprocessError(f"{name}: expected an array, got None")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise PreprocessError(f"{name}: cannot be converted to an array ({exc})") from None
    if arr.dtype.kind not in kinds:
        raise PreprocessError(f"{name}: expected dtype kind in {kinds!r} (e.g. uint8/float32), got {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise PreprocessError(f"{name}: expected a {want} array, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise PreprocessError(f"{name}: is empty (shape {arr.shape})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise PreprocessError(f"{name}: contains {bad} NaN/inf value(s); clean or mask them first")
    return arr


def positive(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PreprocessError(f"{name}: expected a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise PreprocessError(f"{name}: expected a positive number, got {value!r}")
    return v
