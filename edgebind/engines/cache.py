"""The TensorRT engine cache under ``engines/<model>/``: keys, sidecars, staleness and atomic writes.

A serialized TensorRT plan only runs on the TensorRT version, GPU and (on Jetson) L4T release that
built it, and only encodes the ONNX, precision recipe and shape profile it was built from. Each
plan therefore has a JSON sidecar holding its ``EngineCacheKey``; before a plan is deserialised its
sidecar is compared with the key expected here and now, and every differing field becomes a
human-readable reason ("TensorRT 10.3.0 != 8.6.2", "GPU Orin != NVIDIA GeForce RTX 4090", "ONNX
sha256 changed ..."). Layout::

    engines/<model>/<model>.<modality>.<form>.<gpu-slug>-sm<cc>-trt<x.y.z>.plan   # the plan
    engines/<model>/<same stem>.json                                            # its sidecar
    engines/<model>/timing.cache (+ .lock)                                      # shared timing cache
    engines/<model>/<model>.<modality>.<hash>.calib.cache                       # legacy INT8 calibration

Writes are crash-safe: the old sidecar is removed first, the plan is written to a temp file, fsynced
and ``os.replace``d, and the sidecar (with the plan's size and sha256) is written last, also
atomically. A plan without a valid sidecar is an interrupted build and counts as stale. Workspace
size and builder optimisation level are recorded in the sidecar but are not part of the key: they
change build time and speed, not what the engine computes.

Device path: standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from .._config import ConfigMixin
from .._io import atomic_open, atomic_write_bytes, atomic_write_json, sha256_file
from ..errors import ConfigError, EngineError, ManifestError

logger = logging.getLogger(__name__)

SIDECAR_SCHEMA = 1
TIMING_CACHE_NAME = "timing.cache"
L4T_RELEASE_FILE = "/etc/nv_tegra_release"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# -- environment -----------------------------------------------------------------------------------
def read_l4t_release(path: str | os.PathLike[str] | None = None) -> str | None:
    """The L4T release of a Jetson ("36.4.0") from ``/etc/nv_tegra_release``; None elsewhere.

    The file's first line reads like ``# R36 (release), REVISION: 4.0, GCID: ..., BOARD: ...``.
    """
    try:
        first = Path(path or L4T_RELEASE_FILE).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", first)
    return f"{match.group(1)}.{match.group(2)}" if match else first.strip("# ").strip() or None


@dataclasses.dataclass(frozen=True)
class EngineEnvironment:
    """What a plan is tied to besides its inputs: TensorRT, GPU, compute capability, L4T."""

    tensorrt: str
    gpu_name: str
    compute_capability: str
    l4t: str | None = None


def detect_environment(trt: Any, cuda: Any, *, l4t_file: str | os.PathLike[str] | None = None) -> EngineEnvironment:
    """The environment of this process: ``trt.__version__``, the CUDA device, the L4T release."""
    info = cuda.device_info()
    return EngineEnvironment(str(trt.__version__), info.name, info.cc, read_l4t_release(l4t_file))


def gpu_slug(name: str) -> str:
    """File-name form of a GPU name: "NVIDIA GeForce RTX 4090" -> "rtx-4090", "Orin" -> "orin"."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in ("nvidia", "geforce")]
    return "-".join(words)[:40] or "gpu"


# -- the key ---------------------------------------------------------------------------------------
def recipe_sha256(recipe: Any) -> str:
    """Stable hash of a JSON-able recipe (quantization settings, build mode, calibration fingerprint)."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


@dataclasses.dataclass(frozen=True)
class EngineCacheKey(ConfigMixin):
    """Everything a plan depends on. Two keys equal <=> the cached plan may be reused.

    ``form`` is the engine's form (fp32, fp16, int8-qdq, int8-calib); ``build_mode`` how it was
    made (fp32, fp16-flag, strongly-typed, int8-qdq-flags, int8-calibrator); ``source_file`` the
    bundle's ONNX it was parsed from. ``profile_*`` are whole input shapes (batch first).
    """

    model: str
    modality: str
    precision: str
    form: str
    build_mode: str
    source_file: str
    onnx_sha256: str
    recipe_sha256: str
    input_name: str
    profile_min: tuple[int, ...]
    profile_opt: tuple[int, ...]
    profile_max: tuple[int, ...]
    tensorrt: str
    gpu_name: str
    compute_capability: str
    onnx_data_sha256: str | None = None
    l4t: str | None = None

    def __post_init__(self) -> None:
        for name in ("model", "modality", "form"):
            if not _SAFE_NAME.match(getattr(self, name)):
                raise ConfigError(f"EngineCacheKey.{name}: {getattr(self, name)!r} is not a safe file-name part")

    @property
    def environment(self) -> EngineEnvironment:
        return EngineEnvironment(self.tensorrt, self.gpu_name, self.compute_capability, self.l4t)

    def plan_name(self) -> str:
        """``{model}.{modality}.{form}.{gpu-slug}-sm{cc}-trt{x.y.z}.plan``."""
        trt = ".".join(self.tensorrt.split(".")[:3])
        cc = self.compute_capability.replace(".", "")
        return f"{self.model}.{self.modality}.{self.form}.{gpu_slug(self.gpu_name)}-sm{cc}-trt{trt}.plan"


def _short(value: Any) -> str:
    return str(value)[:12] if isinstance(value, str) and len(value) == 64 else str(value)


_LABELS = {
    "tensorrt": "TensorRT", "gpu_name": "GPU", "compute_capability": "compute capability", "l4t": "L4T",
    "onnx_sha256": "ONNX sha256", "onnx_data_sha256": "ONNX external-data sha256", "build_mode": "build mode",
    "source_file": "source ONNX", "input_name": "input name",
}


def stale_reasons(cached: EngineCacheKey, expected: EngineCacheKey) -> list[str]:
    """Why a plan with key ``cached`` cannot serve ``expected`` (empty when they match).

    Each reason reads "<what> <plan's value> != <value here>", e.g. "TensorRT 10.3.0.30 != 8.6.2.3".
    """
    reasons: list[str] = []
    profile_done = False
    for field in dataclasses.fields(EngineCacheKey):
        a, b = getattr(cached, field.name), getattr(expected, field.name)
        if a == b:
            continue
        if field.name.startswith("profile_"):
            if not profile_done:
                profile_done = True
                reasons.append(_profile_reason(cached, expected))
        elif field.name in ("onnx_sha256", "onnx_data_sha256"):
            reasons.append(f"{_LABELS[field.name]} changed ({_short(a)} -> {_short(b)}): the bundle was re-exported")
        elif field.name == "recipe_sha256":
            reasons.append("precision/quantization recipe changed (re-quantized bundle or other calibration data)")
        else:
            label = _LABELS.get(field.name, field.name)
            reasons.append(f"{label} {a if a is not None else 'none'} != {b if b is not None else 'none'}")
    return reasons


def _profile_reason(cached: EngineCacheKey, expected: EngineCacheKey) -> str:
    def batch(k: EngineCacheKey) -> tuple[int, ...]:
        return (k.profile_min[0], k.profile_opt[0], k.profile_max[0]) if k.profile_min else ()

    if cached.profile_min[1:] == expected.profile_min[1:] and cached.profile_max[1:] == expected.profile_max[1:]:
        return f"batch profile min/opt/max {batch(cached)} != {batch(expected)}"
    return (f"input profile {list(cached.profile_min)}..{list(cached.profile_max)} != "
            f"{list(expected.profile_min)}..{list(expected.profile_max)}")


# -- files -----------------------------------------------------------------------------------------
def engine_cache_dir(engines_root: str | os.PathLike[str], model: str) -> Path:
    """``<engines_root>/<model>``: where a model's plans, sidecars and caches live."""
    if not _SAFE_NAME.match(model):
        raise ConfigError(f"model name {model!r} cannot be used as a folder name under {engines_root}")
    return Path(engines_root) / model


def sidecar_path(plan_path: str | os.PathLike[str]) -> Path:
    return Path(plan_path).with_suffix(".json")


def timing_cache_path(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / TIMING_CACHE_NAME


def calibration_cache_path(cache_dir: str | os.PathLike[str], key: EngineCacheKey, calibration_fingerprint: str) -> Path:
    """Legacy INT8 calibration cache: tied to the ONNX (tensor names) and the calibration data."""
    tag = recipe_sha256([key.onnx_sha256, calibration_fingerprint, key.profile_opt])[:12]
    return Path(cache_dir) / f"{key.model}.{key.modality}.{tag}.calib.cache"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, shared: bool = False) -> Iterator[None]:
    """Hold an ``fcntl.flock`` on ``path`` (created if needed); no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: edgebind's devices are Linux
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def publish_plan(plan_path: str | os.PathLike[str], plan: Any, key: EngineCacheKey, build: Mapping[str, Any]) -> dict[str, Any]:
    """Atomically write ``plan`` (bytes or a buffer such as TensorRT's IHostMemory), then its sidecar.

    Order matters: the old sidecar goes first, so an interruption at any point leaves either the
    old state minus its sidecar, or a plan without a sidecar; both read as stale, never as valid.
    """
    plan_path = Path(plan_path)
    with contextlib.suppress(FileNotFoundError):
        sidecar_path(plan_path).unlink()
    digest = hashlib.sha256()
    size = 0
    with atomic_open(plan_path, "wb") as fh:
        view = memoryview(plan).cast("B") if not isinstance(plan, (bytes, bytearray)) else memoryview(plan)
        step = 64 << 20
        for start in range(0, len(view), step):
            chunk = view[start : start + step]
            digest.update(chunk)
            fh.write(chunk)
            size += len(chunk)
    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "key": key.to_dict(),
        "plan": {"file": plan_path.name, "size_bytes": size, "sha256": digest.hexdigest()},
        "build": dict(build),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(sidecar_path(plan_path), sidecar)
    return sidecar


def read_sidecar(plan_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of ``plan_path`` with its key parsed into ``EngineCacheKey`` (``"key"``).

    EngineError naming the file when it is missing, unreadable or of another schema.
    """
    path = sidecar_path(plan_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineError(f"{path}: no sidecar (an earlier build was interrupted, or the plan was copied alone)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: unreadable sidecar ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise EngineError(f"{path}: sidecar schema {got!r} != {SIDECAR_SCHEMA}")
    try:
        data["key"] = EngineCacheKey.from_dict(data.get("key"), where=f"{path.name}.key")
        plan = data["plan"]
        int(plan["size_bytes"]), str(plan["sha256"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"{path}: malformed sidecar ({exc})") from None
    return data


@dataclasses.dataclass(frozen=True)
class CacheStatus:
    """Whether a cached plan can be used; ``reasons`` say why not."""

    valid: bool
    reasons: tuple[str, ...] = ()

    def summary(self) -> str:
        return "valid" if self.valid else "stale: " + "; ".join(self.reasons)


def check_plan(plan_path: str | os.PathLike[str], expected: EngineCacheKey) -> CacheStatus:
    """Is the plan at ``plan_path`` usable for ``expected``? Never deserialises it.

    Checks: plan present, sidecar valid, plan size equal to the sidecar's (a truncated or replaced
    file), key equal. The plan's sha256 is not re-hashed on every start (a ViT-H FP16 plan is over
    1 GB); a same-size corrupt plan fails deserialisation instead, which the engine reports.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        return CacheStatus(False, (f"no plan at {plan_path}",))
    try:
        sidecar = read_sidecar(plan_path)
    except EngineError as exc:
        return CacheStatus(False, (str(exc),))
    size = plan_path.stat().st_size
    if size != sidecar["plan"]["size_bytes"]:
        return CacheStatus(False, (f"{plan_path.name}: {size} bytes, sidecar says {sidecar['plan']['size_bytes']}",))
    reasons = stale_reasons(sidecar["key"], expected)
    return CacheStatus(not reasons, tuple(reasons))


def invalidate_plan(plan_path: str | os.PathLike[str], reason: str) -> None:
    """Remove a plan and its sidecar (sidecar first) so the next ``ensure_engine`` rebuilds it."""
    logger.warning("discarding %s: %s", plan_path, reason)
    for path in (sidecar_path(plan_path), Path(plan_path)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_leftover_temps(plan_path: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files an interrupted (killed) write of this plan left; call under the plan's lock."""
    plan_path = Path(plan_path)
    removed = []
    for name in (plan_path.name, sidecar_path(plan_path).name):
        for tmp in plan_path.parent.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


# -- timing cache ----------------------------------------------------------------------------------
def load_timing_cache(trt_config: Any, path: Path, log: list[str]) -> tuple[Any, bytes]:
    """Load ``path`` (under a shared lock) into ``trt_config``; a missing, damaged or foreign cache
    (other TensorRT/GPU: ``set_timing_cache`` says False) is replaced by an empty one, noted in ``log``."""
    blob = b""
    if path.is_file():
        with file_lock(f"{path}.lock", shared=True):
            blob = path.read_bytes()
    cache = None
    try:
        cache = trt_config.create_timing_cache(blob)
    except Exception as exc:  # noqa: BLE001 - a damaged cache must never stop a build
        log.append(f"timing cache {path} unreadable ({exc}); starting an empty one")
    if cache is None or not trt_config.set_timing_cache(cache, False):
        if blob:
            log.append(f"timing cache {path} is from another TensorRT/GPU; starting an empty one")
        cache = trt_config.create_timing_cache(b"")
        trt_config.set_timing_cache(cache, False)
        blob = b""
    return cache, blob


def save_timing_cache(trt_config: Any, path: Path, read_blob: bytes) -> dict[str, Any]:
    """Merge this build's timing cache into the file (others may have written meanwhile), atomically."""
    ours = trt_config.get_timing_cache()
    with file_lock(f"{path}.lock"):
        current = path.read_bytes() if path.is_file() else b""
        merged = False
        if current and current != read_blob:
            try:
                other = trt_config.create_timing_cache(current)
                merged = bool(other is not None and ours.combine(other, False))
            except Exception as exc:  # noqa: BLE001 - a foreign or damaged file is simply replaced
                logger.info("timing cache %s not merged (%s); replacing it", path, exc)
        data = bytes(ours.serialize())
        atomic_write_bytes(path, data)
    return {"path": os.fspath(path), "loaded_bytes": len(read_blob), "saved_bytes": len(data), "merged": merged}


# -- listing ---------------------------------------------------------------------------------------
def list_cached_engines(
    engines_root: str | os.PathLike[str] = "engines",
    environment: EngineEnvironment | None = None,
    *,
    bundle_dir: str | os.PathLike[str] | None = None,
    unknown_reason: str = "cannot compare with this device (TensorRT or CUDA not available here)",
) -> list[dict[str, Any]]:
    """Every plan (and orphan sidecar) under ``engines_root``, with ``status`` valid / stale / unknown.

    ``environment`` is this device's (``detect_environment``); without it only file-level checks
    run and intact plans are "unknown" with ``unknown_reason``. With ``bundle_dir`` the plans of
    that bundle's model are also checked against the manifest's ONNX sha256.
    """
    root = Path(engines_root)
    sources = _bundle_sources(bundle_dir) if bundle_dir is not None else None
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        plans = sorted(model_dir.glob("*.plan"))
        for plan in plans:
            rows.append(_describe(plan, environment, sources, unknown_reason))
        for side in sorted(model_dir.glob("*.json")):
            if not side.with_suffix(".plan").exists():
                rows.append({"model": model_dir.name, "plan": os.fspath(side.with_suffix(".plan")),
                             "sidecar": os.fspath(side), "status": "stale", "valid": False,
                             "reasons": ["plan missing (only its sidecar is left)"]})
    return rows


def _bundle_sources(bundle_dir: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    from ..bundle.manifest import load_manifest

    try:
        manifest = load_manifest(bundle_dir)
    except ManifestError as exc:
        raise EngineError(f"cannot check engines against {bundle_dir}: {exc}") from exc
    shas = {a.file: a.sha256 for t in manifest.towers.values() for a in t.artifacts}
    return manifest.model, shas


def _describe(plan: Path, env: EngineEnvironment | None, sources: tuple[str, dict[str, str]] | None,
              unknown_reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {"model": plan.parent.name, "plan": os.fspath(plan), "size_bytes": plan.stat().st_size,
                           "sidecar": os.fspath(sidecar_path(plan))}
    try:
        sidecar = read_sidecar(plan)
    except EngineError as exc:
        return {**row, "sidecar": None, "status": "stale", "valid": False, "reasons": [str(exc)]}
    key: EngineCacheKey = sidecar["key"]
    row.update(modality=key.modality, precision=key.precision, form=key.form, build_mode=key.build_mode,
               tensorrt=key.tensorrt, gpu=key.gpu_name, compute_capability=key.compute_capability, l4t=key.l4t,
               created=sidecar.get("created"), build_seconds=sidecar.get("build", {}).get("seconds"))
    reasons: list[str] = []
    if row["size_bytes"] != sidecar["plan"]["size_bytes"]:
        reasons.append(f"{plan.name}: {row['size_bytes']} bytes, sidecar says {sidecar['plan']['size_bytes']}")
    if env is not None:
        here = dataclasses.replace(key, tensorrt=env.tensorrt, gpu_name=env.gpu_name,
                                   compute_capability=env.compute_capability, l4t=env.l4t)
        reasons += stale_reasons(key, here)
    if sources is not None and sources[0] == key.model:
        sha = sources[1].get(key.source_file)
        if sha is None:
            reasons.append(f"source ONNX {key.source_file} is no longer in the bundle")
        elif sha != key.onnx_sha256:
            reasons.append(f"ONNX sha256 changed ({_short(key.onnx_sha256)} -> {_short(sha)}): the bundle was re-exported")
    if reasons:
        return {**row, "status": "stale", "valid": False, "reasons": reasons}
    if env is None:
        return {**row, "status": "unknown", "valid": None, "reasons": [unknown_reason]}
    return {**row, "status": "valid", "valid": True, "reasons": []}


def verify_plan_sha256(plan_path: str | os.PathLike[str]) -> bool:
    """Full check of a plan against its sidecar's sha256 (slow for big plans; ``edgebind info --verify``)."""
    sidecar = read_sidecar(plan_path)
    return sha256_file(plan_path) == sidecar["plan"]["sha256"]
