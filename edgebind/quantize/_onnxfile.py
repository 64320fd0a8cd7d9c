"""ONNX file plumbing shared by the converters: loading, staged atomic writes, external data, records."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .._io import sha256_file
from .._lazy import require
from ..errors import ExportError

# Protobuf cannot serialise a message over 2 GiB; stay clear of it.
PROTOBUF_LIMIT = 2**31 - 1


def onnx_module() -> Any:
    return require("onnx", extra="export", purpose="ONNX quantization and FP16 conversion")


def check_source(src: str | os.PathLike[str]) -> Path:
    path = Path(src)
    if not path.is_file():
        raise ExportError(f"{path}: source ONNX file does not exist")
    return path


def load_model(path: str | os.PathLike[str], with_data: bool = True) -> Any:
    """Load an ONNX file, with its external data unless ``with_data`` is False (graph only)."""
    onnx = onnx_module()
    try:
        return onnx.load(os.fspath(path), load_external_data=with_data)
    except Exception as exc:
        raise ExportError(f"{os.fspath(path)}: cannot load ONNX model ({exc})") from exc


def uses_external_data(model: Any) -> bool:
    """True when any initializer of ``model`` (loaded or not) refers to an external file."""
    onnx = onnx_module()
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def model_size_bytes(path: str | os.PathLike[str]) -> int:
    """Size of an ONNX file plus its external data files."""
    path = Path(path)
    total = path.stat().st_size
    model = load_model(path, with_data=False)
    seen: set[str] = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                data = path.parent / entry.value
                if data.is_file():
                    total += data.stat().st_size
    return total


def data_file_name(dst: str | os.PathLike[str]) -> str:
    return Path(dst).name + ".data"


def promote(staged: Path, dst: str | os.PathLike[str]) -> None:
    """Move a finished model (and its ``<name>.data``, same base name as ``dst``) onto ``dst``.

    The external-data file goes first, then the model, so ``dst`` never refers to missing or partial
    data; a stale ``<name>.data`` from an earlier write is removed when the new model is
    self-contained. ``staged`` must be on the same filesystem (a folder beside ``dst``).
    """
    dst = Path(dst)
    if staged.name != dst.name:
        raise ExportError(f"{staged}: staged model must be named {dst.name!r} so its external data location holds")
    if not staged.is_file():
        raise ExportError(f"{dst}: the converter wrote no model file")
    data = staged.parent / data_file_name(dst)
    extra = sorted(p.name for p in staged.parent.iterdir() if p not in (staged, data))
    if extra:
        raise ExportError(f"{dst}: the converter wrote unexpected side files {extra}; expected only {data.name}")
    for produced in (data, staged):
        if produced.is_file():
            with open(produced, "rb") as fh:
                os.fsync(fh.fileno())
    if data.is_file():
        os.replace(data, dst.parent / data.name)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst.parent / data.name)
    os.replace(staged, dst)


@contextlib.contextmanager
def staging_dir(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp folder beside ``dst`` (same filesystem, so ``promote`` is an atomic rename), removed on exit."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@contextlib.contextmanager
def staged_output(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a path in a temp folder beside ``dst``; on success ``promote`` it (and ``<name>.data``) onto ``dst``.

    On error nothing under ``dst``'s name changes.
    """
    with staging_dir(dst) as tmpdir:
        staged = tmpdir / Path(dst).name
        yield staged
        promote(staged, dst)


def save_model(model: Any, dst: str | os.PathLike[str], external_threshold_bytes: int) -> bool:
    """Atomically save ``model`` to ``dst``; weights go to ``<name>.data`` above the threshold.

    Returns True when external data was written.
    """
    onnx = onnx_module()
    external = _tensor_bytes(model) > min(int(external_threshold_bytes), PROTOBUF_LIMIT)
    with staged_output(dst) as staged:
        if not external:
            from google.protobuf.message import EncodeError

            try:
                onnx.save_model(model, os.fspath(staged))
            except (EncodeError, ValueError):  # the message is over protobuf's 2 GB after all (Constant-heavy graphs)
                external = True
        if external:
            onnx.save_model(model, os.fspath(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_file_name(dst), size_threshold=1024)
    return external


def _tensor_bytes(model: Any) -> int:
    """Bytes of weights (initializers and Constant values): ``ByteSize()`` is unreliable near protobuf's 2 GB limit."""
    from onnx import numpy_helper

    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    total = 0
    for t in tensors:
        if t.HasField("raw_data"):
            total += len(t.raw_data)
        elif t.data_location == 1:  # EXTERNAL
            total += int(next((e.value for e in t.external_data if e.key == "length"), 0))
        else:
            total += numpy_helper.to_array(t).nbytes
    return total


def op_histogram(model: Any) -> dict[str, int]:
    return dict(sorted(collections.Counter(node.op_type for node in model.graph.node).items()))


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Path, size and SHA-256 of an ONNX artifact and of its external data file when present."""
    path = Path(path)
    record: dict[str, Any] = {"path": os.fspath(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    data = path.parent / data_file_name(path)
    if data.is_file() and uses_external_data(load_model(path, with_data=False)):
        record["external_data"] = {"path": os.fspath(data), "bytes": data.stat().st_size, "sha256": sha256_file(data)}
    return record
