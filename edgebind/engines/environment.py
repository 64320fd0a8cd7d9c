"""Facts about the device an engine runs on: ONNX Runtime, TensorRT, GPU, L4T release, memory.

Every probe is cheap, never raises and never imports torch: a missing piece is reported as
``{"available": False, "reason": ...}``. ``describe()`` gathers them (plus the engine-cache listing)
for ``edgebind info``; ``device_fingerprint()`` is the subset that decides whether a cached engine
still fits this device (TensorRT version, GPU name + compute capability, L4T release).

Sources, in order of preference:
- GPU: cuda-python (``cuda.bindings.runtime`` or the older ``cuda.cudart``) when importable, else
  ``nvidia-smi --query-gpu``; on Jetson (no nvidia-smi before JetPack 6) the SoC id from
  ``/sys/module/tegra_fuse/parameters/tegra_chip_id`` gives the compute capability.
- L4T: ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.3, ...`` -> ``36.4.3``).
- Memory: ``/proc/meminfo`` (on Jetson the GPU shares this RAM).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from .._lazy import is_available
from ..bundle.manifest import load_manifest
from ..errors import ManifestError

logger = logging.getLogger(__name__)

NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
PROC_MEMINFO = Path("/proc/meminfo")
TEGRA_CHIP_ID = Path("/sys/module/tegra_fuse/parameters/tegra_chip_id")

# Jetson SoC id -> (name, compute capability). Used only when no CUDA query is possible.
_TEGRA_CHIPS = {
    0x21: ("Tegra X1 (Jetson Nano / TX1)", "5.3"),
    0x18: ("Tegra X2 (Jetson TX2)", "6.2"),
    0x19: ("Xavier (Jetson AGX Xavier / Xavier NX)", "7.2"),
    0x23: ("Orin (Jetson AGX Orin / Orin NX / Orin Nano)", "8.7"),
}


def _absent(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def onnxruntime_facts() -> dict[str, Any]:
    """ORT version, package flavour and available execution providers."""
    if not is_available("onnxruntime"):
        return _absent("onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu on a GPU device)")
    try:
        ort = importlib.import_module("onnxruntime")
        providers = list(ort.get_available_providers())
    except Exception as exc:  # noqa: BLE001 - a broken install is a fact to report
        return _absent(f"onnxruntime fails to import: {exc}")
    package = next((p for p in ("onnxruntime-gpu", "onnxruntime") if _dist_version(p)), None)
    return {"available": True, "version": ort.__version__, "package": package, "providers": providers,
            "device": ort.get_device()}


def tensorrt_facts() -> dict[str, Any]:
    """TensorRT Python bindings: version if importable (JetPack installs them without pip metadata)."""
    if not is_available("tensorrt"):
        return _absent("module 'tensorrt' not importable (JetPack ships it; on x86: pip install tensorrt)")
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # noqa: BLE001
        return _absent(f"tensorrt fails to import: {exc}")
    version = getattr(trt, "__version__", None) or _dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13")
    return {"available": True, "version": version}


def _cuda_python_facts() -> dict[str, Any]:
    version = _dist_version("cuda-python", "cuda-bindings")
    if not is_available("cuda"):
        return _absent("cuda-python not installed (pip install 'edgebind[tensorrt]'; pycuda also works for TensorRT)")
    return {"available": True, "version": version}


def _gpu_from_cuda_python() -> dict[str, Any] | None:
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        if not is_available(name.rsplit(".", 1)[0]) or not is_available(name):
            continue
        try:
            rt = importlib.import_module(name)
            err, count = rt.cudaGetDeviceCount()
            if int(err) != 0 or count < 1:
                return _absent(f"cuda-python: no CUDA device ({err})")
            err, props = rt.cudaGetDeviceProperties(0)
            if int(err) != 0:
                return None
            gpu_name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            facts = {"available": True, "name": gpu_name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}",
                     "count": int(count), "source": name}
            err, free, total = rt.cudaMemGetInfo()
            if int(err) == 0:
                facts.update(memory_total_mib=int(total) // 2**20, memory_free_mib=int(free) // 2**20)
            return facts
        except Exception as exc:  # noqa: BLE001 - fall back to the next source
            logger.debug("cuda-python GPU query via %s failed: %s", name, exc)
    return None


def _gpu_from_nvidia_smi() -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    fields = "name,compute_cap,memory.total,memory.free"
    try:
        proc = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _absent(f"nvidia-smi failed: {exc}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        return _absent(f"nvidia-smi found no GPU ({(proc.stderr or proc.stdout).strip()[:200]})")
    parts = [p.strip() for p in lines[0].split(",")]
    facts: dict[str, Any] = {"available": True, "name": parts[0], "count": len(lines), "source": "nvidia-smi"}
    if len(parts) > 1 and re.fullmatch(r"\d+\.\d+", parts[1]):
        facts["compute_capability"] = parts[1]
    for key, value in zip(("memory_total_mib", "memory_free_mib"), parts[2:4]):
        if value.isdigit():
            facts[key] = int(value)
    return facts


def _gpu_from_tegra(chip_id_path: Path = TEGRA_CHIP_ID) -> dict[str, Any] | None:
    try:
        chip = int(chip_id_path.read_text().strip(), 0)
    except (OSError, ValueError):
        return None
    if chip not in _TEGRA_CHIPS:
        return {"available": True, "name": f"Tegra chip 0x{chip:x}", "source": str(chip_id_path)}
    name, cc = _TEGRA_CHIPS[chip]
    return {"available": True, "name": name, "compute_capability": cc, "source": str(chip_id_path)}


def gpu_facts() -> dict[str, Any]:
    """The first CUDA GPU: name, compute capability, memory (where the source reports it)."""
    for probe in (_gpu_from_cuda_python, _gpu_from_nvidia_smi, _gpu_from_tegra):
        facts = probe()
        if facts is not None and facts.get("available"):
            return facts
    return _absent("no CUDA GPU found (no cuda-python device, no nvidia-smi GPU, not a Jetson)")


def l4t_release(path: str | os.PathLike[str] = NV_TEGRA_RELEASE) -> dict[str, Any]:
    """The Jetson Linux (L4T) release from ``/etc/nv_tegra_release``, e.g. ``{"release": "36.4.3"}``."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return _absent(f"{path} not found (not a Jetson / L4T system)")
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return _absent(f"{path}: unrecognised format: {text.strip()[:120]!r}")
    release = f"{match.group(1)}.{match.group(2)}"
    board = re.search(r"BOARD:\s*([^,\s]+)", text)
    return {"available": True, "release": release, "board": board.group(1) if board else None}


def memory_facts(path: str | os.PathLike[str] = PROC_MEMINFO) -> dict[str, Any]:
    """Total / available RAM and swap in MiB from ``/proc/meminfo``."""
    try:
        text = Path(path).read_text()
    except OSError:
        return _absent(f"{path} not readable (not Linux?)")
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0]) // 1024  # kB -> MiB
    out: dict[str, Any] = {"available": True}
    for key, name in (("MemTotal", "total_mib"), ("MemAvailable", "available_mib"),
                      ("SwapTotal", "swap_total_mib"), ("SwapFree", "swap_free_mib")):
        if key in values:
            out[name] = values[key]
    return out


# CPU features ORT's kernels (and so an optimised graph's NCHWc blocking and INT8 paths) depend on.
_CPU_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "sve", "i8mm")


def cpu_features(path: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """``"x86_64:avx,avx2,avx512f"``-like summary: architecture plus the kernel-relevant flags present."""
    flags: set[str] = set()
    try:
        for line in Path(path).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    return f"{platform.machine()}:{','.join(f for f in _CPU_FLAGS if f in flags)}"


def device_fingerprint(*, gpu: dict[str, Any] | None = None, trt: dict[str, Any] | None = None,
                       l4t: dict[str, Any] | None = None, ort: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a cached engine depends on: runtime versions, GPU name + compute capability, L4T release, CPU."""
    gpu = gpu_facts() if gpu is None else gpu
    trt = tensorrt_facts() if trt is None else trt
    l4t = l4t_release() if l4t is None else l4t
    ort = onnxruntime_facts() if ort is None else ort
    return {
        "onnxruntime": ort.get("version"),
        "tensorrt": trt.get("version"),
        "gpu": gpu.get("name"),
        "compute_capability": gpu.get("compute_capability"),
        "l4t": l4t.get("release"),
        "machine": platform.machine(),
        "cpu": cpu_features(),
    }


def _bundle_staleness(record: Mapping[str, Any]) -> str | None:
    """Why the bundle a cache was made from no longer has that artifact (None if it does or is gone)."""
    bundle = record.get("bundle")
    if not bundle or not (Path(bundle) / "manifest.json").is_file():
        return None
    try:
        tower = load_manifest(bundle).towers.get(str(record.get("modality")))
    except ManifestError:
        return None
    art = next((a for a in (tower.artifacts if tower else ()) if a.form == record.get("form")), None)
    if art is None:
        return f"{bundle} no longer has a {record.get('modality')} {record.get('form')} artifact"
    if art.sha256 != record.get("source_sha256"):
        return f"{bundle} was re-exported: {art.file} is now {art.sha256[:16]}"
    return None


def list_ort_caches(engines_root: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every ORT cache folder under ``engines_root/*/ort/`` with ``status`` valid / stale and the reasons."""
    from .ort_engine import SIDECAR, cache_staleness, read_sidecar

    rows: list[dict[str, Any]] = []
    for folder in sorted(Path(engines_root).glob("*/ort/*")):
        if not folder.is_dir() or folder.name == "trt-timing" or folder.name.startswith("."):
            continue
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        row: dict[str, Any] = {"folder": os.fspath(folder), "model": folder.parent.parent.name, "size_bytes": size}
        record = read_sidecar(folder)
        if record is None:
            rows.append({**row, "status": "stale", "reasons": [f"no {SIDECAR} (an interrupted build)"]})
            continue
        row.update({k: record.get(k) for k in ("provider", "modality", "form", "onnxruntime", "tensorrt", "gpu")})
        reasons = [r for r in (cache_staleness(record, fingerprint, folder), _bundle_staleness(record)) if r]
        rows.append({**row, "status": "stale" if reasons else "valid", "reasons": reasons})
    return rows


def list_caches(engines_root: str | os.PathLike[str], *, fingerprint: dict[str, Any] | None = None,
                bundle_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The engine caches under ``engines_root``: TensorRT plans and ONNX Runtime caches, valid or stale (why)."""
    fingerprint = fingerprint or device_fingerprint()
    root = Path(engines_root)
    out: dict[str, Any] = {"root": os.fspath(root), "exists": root.is_dir(), "tensorrt": [], "onnxruntime": []}
    if not root.is_dir():
        return out
    if is_available("edgebind.engines.cache"):
        from .cache import EngineEnvironment, list_cached_engines

        env = None
        if fingerprint.get("tensorrt") and fingerprint.get("gpu") and fingerprint.get("compute_capability"):
            env = EngineEnvironment(fingerprint["tensorrt"], fingerprint["gpu"], fingerprint["compute_capability"],
                                    fingerprint.get("l4t"))
        out["tensorrt"] = list_cached_engines(root, env, bundle_dir=bundle_dir)
    else:
        out["tensorrt"] = [{"plan": os.fspath(p), "status": "unknown", "reasons": ["no cache module to check it"]}
                           for p in sorted(root.glob("*/*.plan"))]
    out["onnxruntime"] = list_ort_caches(root, fingerprint)
    return out


@functools.lru_cache(maxsize=1)
def cached_fingerprint() -> dict[str, Any]:
    """``device_fingerprint()`` computed once per process (importing tensorrt and querying the GPU is slow)."""
    return device_fingerprint()


def describe(engines_root: str | os.PathLike[str] | None = "engines",
             bundle_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Everything ``edgebind info`` shows: versions, providers, GPU, L4T, memory and the engine caches.

    With ``bundle_dir``, cached TensorRT plans are also checked against that bundle's ONNX files.
    """
    from .. import __version__

    ort, trt, gpu, l4t = onnxruntime_facts(), tensorrt_facts(), gpu_facts(), l4t_release()
    facts: dict[str, Any] = {
        "edgebind": __version__,
        "python": sys.version.split()[0],
        "platform": {"system": platform.system(), "machine": platform.machine(), "release": platform.release()},
        "onnxruntime": ort,
        "tensorrt": trt,
        "cuda_python": _cuda_python_facts(),
        "gpu": gpu,
        "l4t": l4t,
        "memory": memory_facts(),
    }
    fingerprint = device_fingerprint(gpu=gpu, trt=trt, l4t=l4t, ort=ort)
    facts["device_fingerprint"] = fingerprint
    if engines_root is not None:
        facts["caches"] = list_caches(engines_root, fingerprint=fingerprint, bundle_dir=bundle_dir)
    return facts
