"""Load ImageBind checkpoints safely and check them against a model before loading.

Checkpoints are read with ``torch.load(weights_only=True)`` (no pickled code runs) and memory-mapped,
so selecting one tower of the 4.8 GB ``imagebind_huge.pth`` reads only that tower's bytes. Every
failure is a ``CheckpointError`` that names the file and what was expected.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .._config import ConfigMixin
from .._io import sha256_file
from ..errors import CheckpointError
from ..modality import Modality
from .download import default_checkpoint_path

logger = logging.getLogger(__name__)

TOWER_GROUPS: tuple[str, ...] = (
    "modality_preprocessors",
    "modality_trunks",
    "modality_heads",
    "modality_postprocessors",
)
"""The four top-level module dicts of ImageBind; each holds one entry per modality."""

NESTING_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict")
"""Keys under which training scripts commonly nest the state dict; one level is unwrapped."""

TEXT_LOG_LOGIT_SCALE_KEY = "modality_postprocessors.text.1.log_logit_scale"
MAX_LOGIT_SCALE = 100.0  # the forward clips exp(log_logit_scale) at this value

_MAX_LISTED = 20
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format, which can be memory-mapped
_PICKLE_MAGIC = b"\x80"  # the legacy format starts with a raw pickle (protocol 2+)
_DATA_PARALLEL_PREFIX = "module."
_MODALITY_NAMES = frozenset(m.value for m in Modality)


@dataclasses.dataclass(frozen=True)
class LoadReport(ConfigMixin):
    """What ``load_pretrained`` loaded; JSON-serialisable for a bundle manifest."""

    source: str
    modalities: tuple[str, ...]
    keys_loaded: int
    sha256: str | None = None
    text_log_logit_scale: float | None = None
    text_logit_scale: float | None = None  # exp(log scale) clipped at MAX_LOGIT_SCALE, as in the forward
    cast: tuple[str, ...] = ()  # e.g. ("float16->float32",) when the checkpoint dtype differed
    missing_keys: tuple[str, ...] = ()  # only with strict=False
    unexpected_keys: tuple[str, ...] = ()  # only with strict=False


def tower_prefixes(modality: str | Modality) -> tuple[str, ...]:
    """The four key prefixes of one modality's tower, e.g. ``modality_trunks.depth.``."""
    m = Modality.parse(modality).value
    return tuple(f"{group}.{m}." for group in TOWER_GROUPS)


def modality_of_key(key: str) -> str | None:
    """The modality a state-dict key belongs to (``'depth'``), or None for a key outside the towers."""
    group, _, rest = key.partition(".")
    if group not in TOWER_GROUPS:
        return None
    name = rest.partition(".")[0]
    return name if name in _MODALITY_NAMES else None


def select_modalities(
    state_dict: Mapping[str, torch.Tensor], modalities: Iterable[str | Modality] | str, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Keep only the keys of the given modalities' towers; raise if a requested tower is absent."""
    wanted = Modality.parse_list(modalities if isinstance(modalities, str) else list(modalities))
    prefixes = tuple(p for m in wanted for p in tower_prefixes(m))
    selected = {k: v for k, v in state_dict.items() if k.startswith(prefixes)}
    present = {modality_of_key(k) for k in selected}
    absent = [m.value for m in wanted if m.value not in present]
    if absent:
        held = sorted({m for m in map(modality_of_key, state_dict) if m})
        holds = f"it holds the tower(s): {', '.join(held)}" if held else "it holds no ImageBind tower keys"
        hint = _foreign_layout_hint(list(state_dict))
        raise CheckpointError(
            f"{source}: no keys for modality {', '.join(absent)} (expected keys starting with "
            f"{', '.join(repr(p) for p in tower_prefixes(absent[0]))}); {holds}" + (f". {hint}" if hint else "")
        )
    return selected


def checkpoint_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a checkpoint file, read in 1 MiB blocks."""
    path = _check_file(Path(path))
    try:
        return sha256_file(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None


def load_state_dict(
    path: str | os.PathLike[str], modalities: Iterable[str | Modality] | str | None = None
) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` on the CPU, optionally keeping only some modalities' towers.

    No pickled code is run (``weights_only=True``). Zip-format files are memory-mapped, so tensors of
    towers that are not selected are never read from disk. A state dict nested once under
    ``state_dict``/``model``/``model_state_dict`` is unwrapped, and a DataParallel ``module.``
    prefix is removed.
    """
    path = _check_file(Path(path))
    source = str(path)
    state_dict = _strip_data_parallel_prefix(_as_state_dict(_torch_load(path), source), source)
    if modalities is not None:
        state_dict = select_modalities(state_dict, modalities, source)
    logger.debug("%s: %d tensors selected", source, len(state_dict))
    return state_dict


def validate_state_dict(expected: Mapping[str, Any], found: Mapping[str, Any], source: str) -> None:
    """Raise ``CheckpointError`` unless ``found`` has exactly the keys of ``expected`` with the same shapes.

    ``expected`` maps keys to shapes (tuples, ``torch.Size``) or to tensors. The error lists up to
    20 missing keys, unexpected keys and shape mismatches each, with counts, plus a hint when the
    keys look like another layout (Hugging Face port, OpenCLIP, an extra prefix).
    """
    want = {k: tuple(getattr(v, "shape", v)) for k, v in expected.items()}
    missing = [k for k in want if k not in found]
    unexpected = [k for k in found if k not in want]
    mismatched = [
        f"{k}: expected {want[k]}, found {tuple(found[k].shape)}"
        for k in want
        if k in found and tuple(found[k].shape) != want[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} with a wrong shape"
    lines = [f"{source} does not match the model ({counts}; the model expects {len(want)} keys, the checkpoint has {len(found)})"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {item}" for item in items[:_MAX_LISTED]]
            if len(items) > _MAX_LISTED:
                lines.append(f"  ... and {len(items) - _MAX_LISTED} more")
    hint = _foreign_layout_hint(list(found), want) or _absent_tower_hint(want, found)
    if hint:
        lines.append(f"hint: {hint}")
    raise CheckpointError("\n".join(lines))


def load_pretrained(
    model: torch.nn.Module,
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    strict: bool = True,
    *,
    compute_sha256: bool = False,
) -> LoadReport:
    """Load checkpoint weights into ``model`` (only the towers in ``model.modalities``) and report what was loaded.

    The checkpoint is validated first (see ``validate_state_dict``); with ``strict=False`` missing
    and unexpected keys are logged and reported instead, but wrong shapes still raise. Floating
    tensors in another dtype (e.g. an fp16/bf16 checkpoint) are cast to the model's dtype.
    """
    modalities = tuple(Modality.parse(m) for m in getattr(model, "modalities", ()) or ())
    sha256 = None
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = str(path_or_state_dict)
        state_dict = load_state_dict(path_or_state_dict, modalities or None)
        if compute_sha256:
            sha256 = checkpoint_sha256(path_or_state_dict)
    elif isinstance(path_or_state_dict, Mapping):
        source = "state dict"
        state_dict = _strip_data_parallel_prefix(_as_state_dict(path_or_state_dict, source), source)
        if modalities:
            state_dict = select_modalities(state_dict, modalities, source)
    else:
        raise CheckpointError(
            f"load_pretrained: expected a checkpoint path or a state dict, got {type(path_or_state_dict).__name__}"
        )

    target = model.state_dict()
    missing: list[str] = []
    unexpected: list[str] = []
    if strict:
        validate_state_dict(target, state_dict, source)
    else:
        missing = [k for k in target if k not in state_dict]
        unexpected = [k for k in state_dict if k not in target]
        validate_state_dict({k: target[k].shape for k in state_dict if k in target},
                            {k: v for k, v in state_dict.items() if k in target}, source)
        if missing or unexpected:
            logger.warning("%s: loading non-strictly; %d missing and %d unexpected keys (first: %s)",
                           source, len(missing), len(unexpected), (missing + unexpected)[:3])
        state_dict = {k: v for k, v in state_dict.items() if k in target}

    state_dict, cast = _cast_to_model_dtypes(state_dict, target, source)
    # A model built on the meta device has no storage to copy into: take the tensors instead.
    assign = any(t.is_meta for t in target.values())
    model.load_state_dict(state_dict, strict=strict, assign=assign)
    log_scale, scale = _text_logit_scale(state_dict)
    report = LoadReport(
        source=source,
        modalities=tuple(m.value for m in modalities) or tuple(sorted({m for m in map(modality_of_key, state_dict) if m})),
        keys_loaded=len(state_dict),
        sha256=sha256,
        text_log_logit_scale=log_scale,
        text_logit_scale=scale,
        cast=cast,
        missing_keys=tuple(missing),
        unexpected_keys=tuple(unexpected),
    )
    logger.info("loaded %d tensors (%s) from %s", report.keys_loaded, ", ".join(report.modalities) or "no tower", source)
    return report


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; download the official weights with `edgebind download` "
            f"(saved to {default_checkpoint_path()} by default) or pass the path of an existing .pth file"
        )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; expected a .pth file saved with torch.save")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the download was probably interrupted: "
                              "delete it and run `edgebind download --force`")
    return path


def _torch_load(path: Path) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == _ZIP_MAGIC:
        mmap = True
    elif head[:1] == _PICKLE_MAGIC:
        logger.warning("%s uses the legacy (non-zip) torch.save format, which cannot be memory-mapped: "
                       "reading the whole file into memory. Re-save it with torch.save(...) to avoid this.", path)
        mmap = False
    else:
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint: it starts with bytes {head!r}, expected a zip archive "
            f"({_ZIP_MAGIC!r}, torch.save's format) or a legacy pickle (b'\\x80...')"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = " ".join(f"{exc} {exc.__context__ or ''}".split())
        if "GLOBAL" in detail:
            # weights_only refuses to import classes/functions named in the pickle; running them
            # could execute arbitrary code, so edgebind never retries with weights_only=False.
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects that would need code execution to load "
                f"(refused by torch.load(weights_only=True): {_excerpt(detail, 'GLOBAL')}). edgebind loads only plain "
                "state dicts of tensors: if you trust the file, re-save it as torch.save(model.state_dict(), path)"
            ) from None
        raise _corrupt(path, exc) from None
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # zip/EOF/OS errors from truncated or overwritten files
        raise _corrupt(path, exc) from None


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return CheckpointError(
        f"checkpoint {path} is truncated or corrupt ({path.stat().st_size} bytes; torch.load: {reason}); "
        "delete it and download it again with `edgebind download --force`"
    )


def _excerpt(text: str, needle: str, width: int = 160) -> str:
    at = max(text.find(needle) - 40, 0)
    return text[at : at + width].strip()


def _as_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        nested = [k for k in NESTING_KEYS if isinstance(obj.get(k), Mapping)]
        if nested:
            others = sorted(str(k) for k in obj if k != nested[0])
            logger.debug("%s: using the state dict nested under %r (ignoring top-level keys %s)", source, nested[0], others)
            obj = obj[nested[0]]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} is not a state dict: it holds a {type(obj).__name__}, expected a dict mapping parameter names "
            "to tensors (as written by torch.save(model.state_dict(), path))"
        )
    if not obj:
        raise CheckpointError(f"{source} is an empty state dict; expected parameter names mapped to tensors")
    bad = [(k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        examples = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in bad[:5])
        raise CheckpointError(
            f"{source} is not a state dict: {len(bad)} of {len(obj)} entries are not str -> tensor "
            f"(e.g. {examples}); expected only tensors, optionally nested once under one of {list(NESTING_KEYS)}"
        )
    return dict(obj)


def _all_tensors(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_data_parallel_prefix(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state_dict):
        logger.info("%s: removed the DataParallel prefix %r from all %d keys", source, _DATA_PARALLEL_PREFIX, len(state_dict))
        return {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


def _foreign_layout_hint(found_keys: Sequence[str], expected: Mapping[str, Any] | None = None) -> str:
    """A sentence explaining what layout the keys seem to have, or '' when they look like ImageBind's."""
    if not found_keys or sum(modality_of_key(k) is not None for k in found_keys) > len(found_keys) // 2:
        return ""
    sample = found_keys[0]
    official = "official ImageBind names such as 'modality_trunks.vision.blocks.0.attn.in_proj_weight'"
    if any(k.startswith(("vision_model.", "text_model.", "audio_model.", "depth_model.", "thermal_model.", "imu_model."))
           or ".self_attn.q_proj." in k for k in found_keys):
        return (f"the keys look like the Hugging Face transformers ImageBind port (e.g. {sample!r}); edgebind needs the "
                f"{official}: use the original imagebind_huge.pth (`edgebind download`)")
    if any(k.startswith(("visual.transformer.", "transformer.resblocks.")) for k in found_keys):
        return f"the keys look like an OpenCLIP checkpoint (e.g. {sample!r}), not ImageBind; edgebind needs the {official}"
    first = {k.partition(".")[0] for k in found_keys}
    if len(first) == 1 and "." in sample:
        prefix = sample.partition(".")[0] + "."
        stripped = {k[len(prefix):] for k in found_keys}
        if expected is None or stripped & set(expected):
            return f"every key starts with {prefix!r}; strip that prefix to get the {official}"
    return f"the keys (e.g. {sample!r}) are not ImageBind's; edgebind needs the {official}"


def _absent_tower_hint(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    """Name the towers the model has but the checkpoint lacks entirely (e.g. a per-modality split file)."""
    by_tower: dict[str, list[str]] = collections.defaultdict(list)
    for key in expected:
        tower = modality_of_key(key)
        if tower:
            by_tower[tower].append(key)
    absent = [m for m, keys in by_tower.items() if not any(k in found for k in keys)]
    if not absent:
        return ""
    return (f"the checkpoint has no keys for the {', '.join(absent)} tower(s) of the model; build the model with only "
            "the modalities the checkpoint holds, or use a checkpoint that has them")


def _cast_to_model_dtypes(
    state_dict: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    casts: collections.Counter[str] = collections.Counter()
    out = dict(state_dict)
    for key, tensor in state_dict.items():
        want = target[key].dtype
        if tensor.dtype != want and tensor.is_floating_point() and target[key].is_floating_point():
            out[key] = tensor.to(want)
            casts[f"{str(tensor.dtype).removeprefix('torch.')}->{str(want).removeprefix('torch.')}"] += 1
    for change, count in casts.items():
        logger.info("%s: cast %d tensors %s to match the model", source, count, change)
    return out, tuple(sorted(casts))


def _text_logit_scale(state_dict: Mapping[str, torch.Tensor]) -> tuple[float | None, float | None]:
    tensor = state_dict.get(TEXT_LOG_LOGIT_SCALE_KEY)
    if tensor is None or tensor.numel() != 1:
        return None, None
    log_scale = float(tensor.float().item())
    scale = math.exp(log_scale) if log_scale < 700 else math.inf
    if scale > MAX_LOGIT_SCALE:
        logger.info("text logit scale exp(%.4f) = %.2f is clipped to %.0f by the forward", log_scale, scale, MAX_LOGIT_SCALE)
    return log_scale, min(scale, MAX_LOGIT_SCALE)
