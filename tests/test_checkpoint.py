"""Checkpoint loading: safe torch.load, tower selection, validation messages, dtype casts, tiny-model round trip."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgebind.errors import CheckpointError, ConfigError
from edgebind.models.checkpoint import (
    LoadReport,
    checkpoint_sha256,
    load_pretrained,
    load_state_dict,
    modality_of_key,
    select_modalities,
    tower_prefixes,
    validate_state_dict,
)

LOGGER = "edgebind.models.checkpoint"


def _small_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "modality_preprocessors.depth.cls_token": torch.randn(1, 1, 8, generator=g),
        "modality_trunks.depth.blocks.0.attn.in_proj_weight": torch.randn(24, 8, generator=g),
        "modality_heads.depth.2.weight": torch.randn(16, 8, generator=g),
        "modality_postprocessors.depth.1.log_logit_scale": torch.tensor(1.6094),
        "modality_trunks.imu.blocks.0.norm_1.weight": torch.randn(4, generator=g),
        "modality_postprocessors.text.1.log_logit_scale": torch.tensor(4.0),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


class _Tiny(torch.nn.Module):
    """A stand-in with ImageBind key names for unit tests that do not need the real model."""

    modalities = ("depth",)

    def __init__(self, width: int = 8):
        super().__init__()
        self.modality_preprocessors = torch.nn.ModuleDict({"depth": torch.nn.Module()})
        self.modality_preprocessors["depth"].cls_token = torch.nn.Parameter(torch.zeros(1, 1, width))
        self.modality_heads = torch.nn.ModuleDict({"depth": torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity(),
                                                                               torch.nn.Linear(width, 16, bias=False))})


def _tiny_state(width: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"modality_preprocessors.depth.cls_token": torch.randn(1, 1, width, generator=g),
            "modality_heads.depth.2.weight": torch.randn(16, width, generator=g)}


# ---------------------------------------------------------------------------- reading files


def test_plain_state_dict_round_trip(tmp_path):
    sd = _small_state_dict()
    torch.save(sd, tmp_path / "c.pth")
    _assert_same(load_state_dict(tmp_path / "c.pth"), sd)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_one_level_of_nesting_is_unwrapped(tmp_path, wrapper, caplog):
    sd = _small_state_dict()
    torch.save({wrapper: sd, "epoch": 3}, tmp_path / "c.pth")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        _assert_same(load_state_dict(tmp_path / "c.pth"), sd)
    assert any(f"nested under {wrapper!r}" in r.getMessage() for r in caplog.records)


def test_data_parallel_prefix_is_stripped(tmp_path, caplog):
    sd = _small_state_dict()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "c.pth")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _assert_same(load_state_dict(tmp_path / "c.pth"), sd)
    assert any("'module.'" in r.getMessage() for r in caplog.records)


def test_modalities_select_the_four_tower_prefixes(tmp_path):
    sd = _small_state_dict()
    torch.save(sd, tmp_path / "c.pth")
    depth = load_state_dict(tmp_path / "c.pth", modalities=["depth"])
    assert sorted(depth) == sorted(k for k in sd if ".depth." in k) and len(depth) == 4
    both = load_state_dict(tmp_path / "c.pth", modalities="imu,depth")
    assert {modality_of_key(k) for k in both} == {"depth", "imu"}
    assert tower_prefixes("IMU")[1] == "modality_trunks.imu."
    with pytest.raises(CheckpointError, match=r"no keys for modality vision .*holds the tower\(s\): depth, imu, text"):
        load_state_dict(tmp_path / "c.pth", modalities=["vision", "depth"])
    with pytest.raises(ConfigError, match="unknown modality 'lidar'"):
        load_state_dict(tmp_path / "c.pth", modalities=["lidar"])


_PEAK_RSS_CHILD = r"""
import json, sys
from edgebind.models.checkpoint import load_state_dict
def peak():
    # VmHWM: this process's high-water RSS, touched mmapped file pages included. (ru_maxrss would
    # not do: Linux carries the parent's high-water mark across fork+exec.)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
base = peak()
depth = load_state_dict(sys.argv[1], modalities=["depth"])
assert depth["modality_trunks.depth.blocks.0.norm_1.weight"].tolist() == [2.0] * 4
selected = peak()
full = load_state_dict(sys.argv[1])
assert float(full["modality_trunks.vision.blocks.0.mlp.fc1.weight"].sum()) == float(sys.argv[2])
print(json.dumps({"selected": selected - base, "control": peak() - base}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc/self/status (Linux only)")
def test_selecting_a_tower_does_not_read_the_others_into_memory(tmp_path):
    big = 128 * 2**20  # bytes of a stand-in "vision tower"
    torch.save({"modality_trunks.vision.blocks.0.mlp.fc1.weight": torch.ones(big // 4),
                "modality_trunks.depth.blocks.0.norm_1.weight": torch.full((4,), 2.0)}, tmp_path / "c.pth")
    # A fresh process, so the peak RSS reflects this load alone (a load that reads everything and
    # then drops the unselected tensors would not show in the current RSS, only in the peak).
    proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, str(tmp_path / "c.pth"), str(big // 4)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grew = json.loads(proc.stdout)
    # Control: reading the vision tensor must raise the peak, or the first figure proves nothing.
    assert grew["control"] > 0.8 * big, f"control failed: peak RSS grew only {grew['control'] / 2**20:.1f} MiB"
    assert grew["selected"] < 0.2 * big, f"selecting depth materialised {grew['selected'] / 2**20:.1f} MiB"


def test_legacy_format_falls_back_to_a_normal_load_with_a_warning(tmp_path, caplog):
    sd = _small_state_dict()
    torch.save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _assert_same(load_state_dict(tmp_path / "old.pth"), sd)
    assert any("legacy (non-zip)" in r.getMessage() for r in caplog.records)


def test_checkpoint_sha256(tmp_path):
    torch.save(_small_state_dict(), tmp_path / "c.pth")
    assert checkpoint_sha256(tmp_path / "c.pth") == hashlib.sha256((tmp_path / "c.pth").read_bytes()).hexdigest()
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint_sha256(tmp_path / "nope.pth")


# ---------------------------------------------------------------------------- unreadable files


def test_missing_file_names_path_and_suggests_download(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_state_dict(tmp_path / "imagebind_huge.pth")
    assert str(tmp_path / "imagebind_huge.pth") in str(exc.value) and "edgebind download" in str(exc.value)


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_state_dict(tmp_path)
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"e\.pth is empty \(0 bytes\)"):
        load_state_dict(tmp_path / "e.pth")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_checkpoint_cut_in_half_is_reported_as_truncated(tmp_path, legacy):
    whole = tmp_path / "whole.pth"
    torch.save(_small_state_dict(), whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"half\.pth is truncated or corrupt .*edgebind download --force"):
        load_state_dict(tmp_path / "half.pth")


def test_random_bytes(tmp_path):
    rng = random.Random(7)
    (tmp_path / "r.pth").write_bytes(b"\x13\x37" + rng.randbytes(4096))
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint: it starts with bytes"):
        load_state_dict(tmp_path / "r.pth")
    # Garbage after a pickle protocol byte reaches the unpickler, which must not be mistaken for a code refusal.
    (tmp_path / "p.pth").write_bytes(b"\x80\x02" + bytes([14]) + rng.randbytes(4096))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(tmp_path / "p.pth")


@pytest.mark.parametrize(
    "obj, needle",
    [
        ([torch.ones(2)], "holds a list"),
        (torch.ones(3), "holds a Tensor"),
        ({"lr": 0.1, "name": "x"}, "2 of 2 entries are not str -> tensor"),
        ({"model": {"w": torch.ones(1), "step": 4}}, "1 of 2 entries are not str -> tensor (e.g. 'step': int)"),
        ({}, "empty state dict"),
    ],
)
def test_files_that_are_not_state_dicts(tmp_path, obj, needle):
    torch.save(obj, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as exc:
        load_state_dict(tmp_path / "x.pth")
    assert needle in str(exc.value) and str(tmp_path / "x.pth") in str(exc.value)


class _RunsCode:
    """Unpickling this would call os.mkdir(marker): proof of code execution if the marker appears."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_that_needs_code_execution_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"w": torch.ones(2), "payload": _RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="would need code execution") as exc:
        load_state_dict(tmp_path / "evil.pth")
    assert "mkdir" in str(exc.value) and "weights_only=True" in str(exc.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------- validation


def test_validate_lists_missing_unexpected_and_shapes_with_counts():
    expected = {f"modality_trunks.depth.blocks.{i}.w": (4,) for i in range(30)}
    expected["modality_heads.depth.2.weight"] = torch.Size([16, 8])
    found = {f"modality_trunks.depth.blocks.{i}.w": torch.zeros(4) for i in range(5)}
    found["modality_heads.depth.2.weight"] = torch.zeros(16, 4)
    found["modality_trunks.depth.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as exc:
        validate_state_dict(expected, found, "ck.pth")
    msg = str(exc.value)
    assert msg.startswith("ck.pth does not match the model (25 missing, 1 unexpected, 1 with a wrong shape")
    assert "missing keys (25):" in msg and "... and 5 more" in msg
    # Missing are blocks 5..29: only the first 20 (5..24) are listed.
    assert "modality_trunks.depth.blocks.24.w\n" in msg and "modality_trunks.depth.blocks.25.w" not in msg
    assert "unexpected keys (1):\n  modality_trunks.depth.extra" in msg
    assert "modality_heads.depth.2.weight: expected (16, 8), found (16, 4)" in msg
    validate_state_dict({k: tuple(v.shape) for k, v in found.items()}, found, "ok")  # exact match passes


@pytest.mark.parametrize(
    "keys, hint",
    [
        (["vision_model.encoder.layers.0.self_attn.q_proj.weight", "text_model.embeddings.token_embedding.weight"],
         "Hugging Face transformers ImageBind port"),
        (["visual.transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight"], "OpenCLIP"),
        (["module.modality_heads.depth.2.weight", "module.modality_preprocessors.depth.cls_token"],
         "every key starts with 'module.'"),
    ],
)
def test_validate_hints_at_foreign_layouts(keys, hint):
    expected = {"modality_heads.depth.2.weight": (16, 8), "modality_preprocessors.depth.cls_token": (1, 1, 8)}
    with pytest.raises(CheckpointError, match="hint: .*" + hint.replace(".", r"\.")):
        validate_state_dict(expected, {k: torch.zeros(1) for k in keys}, "x.pth")


def test_validate_names_an_absent_tower():
    expected = {"modality_heads.depth.2.weight": (2,), "modality_heads.imu.3.weight": (2,)}
    with pytest.raises(CheckpointError, match=r"no keys for the imu tower"):
        validate_state_dict(expected, {"modality_heads.depth.2.weight": torch.zeros(2)}, "x.pth")


# ---------------------------------------------------------------------------- load_pretrained (stand-in model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_are_cast_to_the_model_dtype(tmp_path, dtype, caplog):
    sd = _tiny_state()
    torch.save({k: v.to(dtype) for k, v in sd.items()}, tmp_path / "h.pth")
    model = _Tiny()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        report = load_pretrained(model, tmp_path / "h.pth")
    name = str(dtype).removeprefix("torch.")
    assert report.cast == (f"{name}->float32",) and report.keys_loaded == 2
    assert any(f"cast 2 tensors {name}->float32" in r.getMessage() for r in caplog.records)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, sd[key].to(dtype).float())


def test_load_pretrained_rejects_wrong_shapes_and_leaves_the_model_untouched():
    model = _Tiny(width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"cls_token: expected \(1, 1, 8\), found \(1, 1, 4\)"):
        load_pretrained(model, _tiny_state(width=4))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_pretrained(model, _tiny_state(width=4), strict=False)
    _assert_same(model.state_dict(), before)


def test_load_pretrained_missing_and_unexpected_keys():
    sd = _tiny_state()
    partial = {"modality_heads.depth.2.weight": sd["modality_heads.depth.2.weight"],
               "modality_heads.depth.9.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"1 missing, 1 unexpected, 0 with a wrong shape"):
        load_pretrained(_Tiny(), partial)
    model = _Tiny()
    report = load_pretrained(model, partial, strict=False)
    assert report.missing_keys == ("modality_preprocessors.depth.cls_token",)
    assert report.unexpected_keys == ("modality_heads.depth.9.weight",) and report.keys_loaded == 1
    assert torch.equal(model.state_dict()["modality_heads.depth.2.weight"], sd["modality_heads.depth.2.weight"])


def test_load_pretrained_rejects_other_inputs():
    with pytest.raises(CheckpointError, match="expected a checkpoint path or a state dict, got list"):
        load_pretrained(_Tiny(), [1, 2])


def test_load_report_is_json_serialisable():
    report = LoadReport(source="x", modalities=("depth",), keys_loaded=3, cast=("float16->float32",))
    assert LoadReport.from_dict(report.to_dict()) == report


# ---------------------------------------------------------------------------- the real tiny model


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from edgebind.models.imagebind import build

    model = build("imagebind_tiny", seed=3)
    with torch.no_grad():  # a trained-looking text temperature, distinct from the init value
        model.modality_postprocessors["text"][1].log_logit_scale.fill_(4.0)
    path = tmp_path_factory.mktemp("ckpt") / "imagebind_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_tiny_round_trip_depth_only(tiny_checkpoint):
    from edgebind.models.imagebind import build

    full, path = tiny_checkpoint
    reference = full.state_dict()
    depth = load_state_dict(path, modalities=["depth"])
    expected_keys = [k for k in reference if k.startswith(tower_prefixes("depth"))]
    assert sorted(depth) == sorted(expected_keys) and 0 < len(depth) < len(reference)

    model = build("imagebind_tiny", modalities=["depth"], init="none")
    report = load_pretrained(model, path, compute_sha256=True)
    assert report.modalities == ("depth",) and report.keys_loaded == len(expected_keys)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert report.text_logit_scale is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    x = torch.randn(2, 1, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model.embed("depth", x) - full.embed("depth", x)).abs().max().item()
    assert diff == 0.0


def test_tiny_text_scale_and_meta_build(tiny_checkpoint):
    from edgebind.models.imagebind import build

    _, path = tiny_checkpoint
    model = build("imagebind_tiny", modalities=["text", "imu"], device="meta")
    report = load_pretrained(model, path)
    assert report.modalities == ("text", "imu")
    assert report.text_log_logit_scale == pytest.approx(4.0)
    assert report.text_logit_scale == pytest.approx(54.598, rel=1e-4)
    assert model.logit_scale("text") == pytest.approx(report.text_logit_scale, rel=1e-6)
    assert not any(t.is_meta for t in model.state_dict().values())


def test_tiny_checkpoint_without_the_models_tower(tiny_checkpoint, tmp_path):
    from edgebind.models.imagebind import build

    full, _ = tiny_checkpoint
    audio_only = select_modalities(full.state_dict(), ["audio"])
    torch.save({f"module.{k}": v for k, v in audio_only.items()}, tmp_path / "audio.pth")
    model = build("imagebind_tiny", modalities=["audio"], init="none")
    assert load_pretrained(model, tmp_path / "audio.pth").keys_loaded == len(audio_only)
    with pytest.raises(CheckpointError, match=r"audio\.pth: no keys for modality depth .*holds the tower\(s\): audio"):
        load_pretrained(build("imagebind_tiny", modalities=["depth"], device="meta"), tmp_path / "audio.pth")
