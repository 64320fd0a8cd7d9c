"""Feed handling: turn arrays or feed dicts into ONNX Runtime feeds and a ``CalibrationDataReader``."""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..errors import CalibrationError



def model_input_names(model_path: str | os.PathLike[str]) -> list[str]:
    """Names of the graph inputs of an ONNX file (initializers excluded), read without the weights."""
    import onnx  # host-side dependency; the caller already needs it to have an ONNX file

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [inp.name for inp in model.graph.input if inp.name not in initializers]


def normalize_feeds(feeds: Iterable[Any], input_names: Sequence[str], *, what: str = "feeds") -> list[dict[str, np.ndarray]]:
    """Turn arrays (single-input models) or feed dicts into a list of ``{input name: array}`` dicts.

    Raises ``CalibrationError`` naming the item at fault when a dict misses an input, an array is
    given for a multi-input model, or there are no feeds at all.
    """
    out: list[dict[str, np.ndarray]] = []
    for i, item in enumerate(feeds):
        if isinstance(item, Mapping):
            missing = [name for name in input_names if name not in item]
            if missing:
                raise CalibrationError(
                    f"{what}[{i}]: feed dict lacks model input(s) {missing}; it has {sorted(item)}"
                )
            out.append({name: np.asarray(item[name]) for name in input_names})
        else:
            if len(input_names) != 1:
                raise CalibrationError(
                    f"{what}[{i}]: got a bare array but the model has inputs {list(input_names)}; pass feed dicts"
                )
            arr = np.asarray(item)
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            out.append({input_names[0]: arr})
    if not out:
        raise CalibrationError(f"{what}: no data; expected at least one array or feed dict")
    return out


class FeedReader(CalibrationDataReader):
    """A rewindable ``CalibrationDataReader`` over feed dicts or arrays for one model.

    ONNX Runtime's calibrators call ``get_next()`` until it returns ``None``; ``rewind()`` lets the
    same reader serve several passes (calibration, then sensitivity analysis).
    """

    def __init__(self, feeds: Iterable[Any], model_path: str | os.PathLike[str] | None = None,
                 input_names: Sequence[str] | None = None):
        if input_names is None:
            if model_path is None:
                raise CalibrationError("FeedReader: give model_path or input_names to map arrays to inputs")
            input_names = model_input_names(model_path)
        self.input_names = list(input_names)
        self.feeds = normalize_feeds(feeds, self.input_names, what="calibration feeds")
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self.feeds):
            return None
        feed = self.feeds[self._position]
        self._position += 1
        return feed

    def rewind(self) -> None:
        self._position = 0

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.feeds)
