"""The environment a benchmark ran in: CPU model and flags, cores, memory, load, library versions, GPU.

Every result file embeds ``environment_record()`` so a figure can always be traced to the machine
and software that produced it. Probes never raise and never import torch (library versions come
from package metadata); a missing piece is recorded as ``None`` or ``{"available": False, ...}``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROC_CPUINFO = Path("/proc/cpuinfo")
# CPU features that decide which GEMM kernels ORT / torch use (x86 and ARM).
FLAGS_OF_INTEREST = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16",  # x86
    "asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2",  # ARM (Orin: asimddp, no i8mm)
)
LIBRARIES = ("edgebind", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "onnxconverter-common",
             "matplotlib")


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_record(cpuinfo: str | os.PathLike[str] = PROC_CPUINFO) -> dict[str, Any]:
    """CPU model, ISA flags of interest (True/False each), logical / physical core counts, affinity."""
    info: dict[str, Any] = {"machine": platform.machine(), "model": None, "logical_cpus": os.cpu_count()}
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    physical_id = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "hardware", "cpu model") and not info["model"]:
            info["model"] = value
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    if not info["model"]:
        info["model"] = platform.processor() or None
    info["physical_cores"] = len(cores) or None
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["affinity_cpus"] = None
    info["flags"] = {flag: flag in flags for flag in FLAGS_OF_INTEREST}
    info["int8_dot_product"] = any(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
    return info


def library_versions() -> dict[str, str | None]:
    """Installed versions (package metadata, nothing is imported) of the libraries that shape timings."""
    out = {name: _dist_version(name) for name in LIBRARIES}
    out["python"] = platform.python_version()
    return out


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _git_commit(repo: Path) -> str | None:
    if not (repo / ".git").exists():
        return None
    try:
        proc = subprocess.run(["git", "-C", os.fspath(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def environment_record(*, threads: int | None = None, gpu: bool = True) -> dict[str, Any]:
    """Everything a result file needs to say where it was measured.

    ``threads`` is the intra-op thread count the benchmark used; ``gpu=False`` skips the GPU /
    TensorRT probes (they may take a second on machines with nvidia-smi).
    """
    from ..engines.environment import memory_facts, onnxruntime_facts

    record: dict[str, Any] = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_record(),
        "threads": threads,
        "load_average": _load_average(),
        "memory": memory_facts(),
        "libraries": library_versions(),
        "onnxruntime": onnxruntime_facts(),
        "edgebind_commit": _git_commit(Path(__file__).resolve().parents[2]),
    }
    if gpu:
        from ..engines.environment import gpu_facts, l4t_release, tensorrt_facts

        record["gpu"] = gpu_facts()
        record["tensorrt"] = tensorrt_facts()
        record["l4t"] = l4t_release()
    return record


def machine_class(record: dict[str, Any]) -> str:
    """A one-line description for table captions: ``"2-core AMD EPYC (avx512_vnni), onnxruntime 1.32.0"``."""
    cpu = record.get("cpu", {})
    flags = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp") if cpu.get("flags", {}).get(f)]
    cores = cpu.get("affinity_cpus") or cpu.get("logical_cpus")
    libs = record.get("libraries", {})
    ort = libs.get("onnxruntime-gpu") or libs.get("onnxruntime")
    gpu = record.get("gpu") or {}
    gpu_text = f", GPU {gpu['name']}" if gpu.get("available") and gpu.get("name") else ""
    return (f"{cores}-core {cpu.get('model') or cpu.get('machine')} ({', '.join(flags) or 'no INT8 dot-product ISA'})"
            f"{gpu_text}, onnxruntime {ort}, {record.get('threads') or '?'} threads")
