"""How far a converted model's embeddings are from the FP32 reference, and running ONNX files on CPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnxruntime as ort

from .._ort_options import session_options
from ..errors import ConfigError, EngineError
from ..fidelity import compare_embeddings
from .emulate import fp16_emulation_model
from .reader import model_input_names, normalize_feeds


def make_session(path: str | os.PathLike[str], threads: int = 2) -> ort.InferenceSession:
    """A CPU ``InferenceSession`` with ``threads`` intra-op threads and full graph optimisation."""
    options = session_options(ort, threads=threads)
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several unrelated exception types for bad models
        raise EngineError(f"{os.fspath(path)}: ONNX Runtime cannot load the model ({exc})") from exc


def run_onnx(path: str | os.PathLike[str], feeds_list: Iterable[Any], threads: int = 2,
             output: str | int = 0) -> np.ndarray:
    """Run an ONNX file on CPU over ``feeds_list`` (arrays or feed dicts) and stack one output.

    ``output`` selects the output by index or name. Returns FP32 rows concatenated along axis 0.
    """
    feeds = normalize_feeds(feeds_list, model_input_names(path), what="feeds_list")
    session = make_session(path, threads)
    names = [o.name for o in session.get_outputs()]
    if isinstance(output, int):
        if not 0 <= output < len(names):
            raise ConfigError(f"run_onnx: output index {output} out of range; {os.fspath(path)} has outputs {names}")
        output_name = names[output]
    elif output in names:
        output_name = output
    else:
        raise ConfigError(f"run_onnx: no output named {output!r}; {os.fspath(path)} has outputs {names}")
    rows: Sequence[np.ndarray] = [session.run([output_name], feed)[0] for feed in feeds]
    return np.concatenate([np.asarray(r, dtype=np.float32) for r in rows], axis=0)


def fidelity_of(ref_path: str | os.PathLike[str], test_path: str | os.PathLike[str], feeds_list: Sequence[Any],
                threads: int = 2, ref: np.ndarray | None = None) -> dict[str, float]:
    """``compare_embeddings`` of two ONNX files on the same feeds (``ref`` skips re-running the reference)."""
    if ref is None:
        ref = run_onnx(ref_path, feeds_list, threads)
    return compare_embeddings(ref, run_onnx(test_path, feeds_list, threads))


def fp16_fidelity(ref_path: str | os.PathLike[str], fp16_path: str | os.PathLike[str], feeds_list: Sequence[Any],
                  threads: int = 2, ref: np.ndarray | None = None) -> dict[str, float]:
    """``fidelity_of`` for an FP16 model, run through its rounding FP32 twin (``emulate.fp16_emulation_model``).

    Running the FP16 file itself on ONNX Runtime's CPU backend hides FP16 rounding and overflow.
    """
    with tempfile.TemporaryDirectory(prefix="edgebind-fp16emu-") as tmp:
        twin = fp16_emulation_model(fp16_path, Path(tmp) / Path(fp16_path).name)
        return fidelity_of(ref_path, twin, feeds_list, threads, ref=ref)
