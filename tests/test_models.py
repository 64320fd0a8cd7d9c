"""edgebind.models: checkpoint layout of imagebind_huge (meta device) and behaviour of imagebind_tiny."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgebind.errors import ModelError
from edgebind.modality import ALL_MODALITIES, Modality
from edgebind.models import ImageBindConfig, build, get_config, list_models
from edgebind.models.layers import SelfAttention
from edgebind.models.towers import VisionStem

KEYS_FILE = Path(__file__).parent / "data" / "imagebind_huge_keys.txt"
BLOCK_KEY = re.compile(r"^modality_trunks\.(\w+)\.blocks\.(\d+)\.(.+)$")

# Non-block keys that the dump file does not list (it stops after the depth head); from research §3.
EXTRA_HUGE_KEYS = {
    "modality_heads.depth.2.weight": (1024, 384),
    "modality_heads.thermal.0.weight": (768,),
    "modality_heads.thermal.0.bias": (768,),
    "modality_heads.thermal.2.weight": (1024, 768),
    "modality_heads.imu.0.weight": (512,),
    "modality_heads.imu.0.bias": (512,),
    "modality_heads.imu.3.weight": (1024, 512),
    "modality_postprocessors.text.1.log_logit_scale": (),
    "modality_postprocessors.audio.1.log_logit_scale": (),
    "modality_postprocessors.depth.1.log_logit_scale": (),
    "modality_postprocessors.thermal.1.log_logit_scale": (),
    "modality_postprocessors.imu.1.log_logit_scale": (),
}
HUGE_KEY_COUNTS = {"vision": 392, "text": 295, "audio": 177, "depth": 177, "thermal": 177, "imu": 93}
HUGE_PARAM_COUNTS = {
    "vision": 632_829_440,
    "text": 354_032_641,
    "audio": 86_235_648,
    "thermal": 86_211_072,
    "depth": 21_871_872,
    "imu": 19_600_384,
}
HUGE_BLOCKS = {"vision": 32, "text": 24, "audio": 12, "depth": 12, "thermal": 12, "imu": 6}


def _read_key_dump() -> tuple[int, dict[str, tuple[int, ...]]]:
    lines = KEYS_FILE.read_text().splitlines()
    total = int(lines[0].split()[-1])
    shapes: dict[str, tuple[int, ...]] = {}
    for line in lines[1:]:
        match = re.fullmatch(r"(\S+) \(([\d, ]*)\) float32", line.strip())
        assert match, f"unparsed line in {KEYS_FILE.name}: {line!r}"
        shapes[match[1]] = tuple(int(v) for v in match[2].replace(",", " ").split())
    return total, shapes


@pytest.fixture(scope="module")
def huge_meta():
    return build("imagebind_huge", device="meta")


@pytest.fixture(scope="module")
def tiny():
    return build("imagebind_tiny", seed=0)


def _inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 49406, (batch, 77), generator=g)
    tokens[:, 0] = 49406
    for row in range(batch):
        eot = 3 + 5 * row
        tokens[row, eot] = 49407
        tokens[row, eot + 1 :] = 0
    return {
        "vision": torch.randn(batch, 3, 224, 224, generator=g),
        "text": tokens,
        "audio": torch.randn(batch, 1, 128, 204, generator=g),
        "depth": torch.randn(batch, 1, 224, 224, generator=g),
        "thermal": torch.rand(batch, 1, 224, 224, generator=g),
        "imu": torch.randn(batch, 6, 2000, generator=g),
    }


# ---------------------------------------------------------------------------------------------
# imagebind_huge layout (meta device: no memory, no init)


def test_huge_state_dict_matches_official_dump(huge_meta):
    total, dump = _read_key_dump()
    state = {k: tuple(v.shape) for k, v in huge_meta.state_dict().items()}
    assert len(state) == total == 1311

    for key, shape in dump.items():
        assert key in state, f"missing official key {key}"
        assert state[key] == shape, f"{key}: {state[key]} != official {shape}"
    for key, shape in EXTRA_HUGE_KEYS.items():
        assert state.get(key) == shape, f"{key}: {state.get(key)} != {shape}"

    # Every block repeats block 0's key set and shapes, for exactly the official block count.
    blocks: dict[tuple[str, int], dict[str, tuple[int, ...]]] = {}
    for key, shape in state.items():
        match = BLOCK_KEY.match(key)
        if match:
            blocks.setdefault((match[1], int(match[2])), {})[match[3]] = shape
    for modality, count in HUGE_BLOCKS.items():
        block0 = {
            BLOCK_KEY.match(k)[3]: s for k, s in dump.items() if k.startswith(f"modality_trunks.{modality}.blocks.0.")
        }
        assert len(block0) == (12 if modality in ("vision", "text") else 14)
        indices = sorted(i for m, i in blocks if m == modality)
        assert indices == list(range(count)), f"{modality} block indices {indices}"
        for i in indices:
            assert blocks[(modality, i)] == block0, f"{modality} block {i} differs from block 0"

    # Nothing else: every key is either listed, extra, or a block key.
    unexpected = [k for k in state if k not in dump and k not in EXTRA_HUGE_KEYS and not BLOCK_KEY.match(k)]
    assert unexpected == []


def test_huge_per_tower_key_and_parameter_counts(huge_meta):
    keys = {m: 0 for m in HUGE_KEY_COUNTS}
    for key in huge_meta.state_dict():
        keys[key.split(".")[1]] += 1
    assert keys == HUGE_KEY_COUNTS

    params = {m: 0 for m in HUGE_PARAM_COUNTS}
    for name, p in huge_meta.named_parameters():
        params[name.split(".")[1]] += p.numel()
    assert params == HUGE_PARAM_COUNTS
    assert sum(params.values()) == 1_200_781_057


def test_huge_buffers_and_parameters_sit_where_the_checkpoint_has_them(huge_meta):
    params = dict(huge_meta.named_parameters())
    buffers = dict(huge_meta.named_buffers())
    assert "modality_postprocessors.text.1.log_logit_scale" in params
    assert "modality_preprocessors.text.mask" in buffers
    for m in ("audio", "depth", "thermal", "imu"):
        assert f"modality_postprocessors.{m}.1.log_logit_scale" in buffers
    assert len(buffers) == 5
    assert all(p.device.type == "meta" for p in params.values())


def test_huge_config_geometry():
    cfg = get_config("imagebind_huge")
    assert (cfg.vision_embed_dim, cfg.vision_num_blocks, cfg.vision_num_heads) == (1280, 32, 16)
    assert (cfg.text_embed_dim, cfg.text_num_blocks, cfg.text_num_heads) == (1024, 24, 16)
    assert (cfg.imu_embed_dim, cfg.imu_num_blocks, cfg.imu_num_heads) == (512, 6, 8)
    tokens = {m.value: cfg.num_tokens(m) for m in ALL_MODALITIES}
    assert tokens == {"vision": 257, "text": 77, "audio": 229, "depth": 197, "thermal": 197, "imu": 251}
    assert cfg.input_shape("vision", video=True) == (3, 2, 224, 224)
    assert cfg.input_shape("imu") == (6, 2000)
    assert ImageBindConfig.from_dict(cfg.to_dict()) == cfg
    tiny_cfg = get_config("imagebind_tiny")
    assert all(tiny_cfg.input_shape(m) == cfg.input_shape(m) for m in ALL_MODALITIES)
    assert tiny_cfg.text_vocab_size == 49408 and tiny_cfg.out_embed_dim < cfg.out_embed_dim


# ---------------------------------------------------------------------------------------------
# registry, build options and errors


def test_registry():
    assert list_models() == ["imagebind_huge", "imagebind_tiny"]
    with pytest.raises(ModelError, match="imagebind_huge"):
        get_config("imagebind_large")


def test_unknown_override_lists_valid_names():
    with pytest.raises(ModelError, match="vision_depth") as info:
        build("imagebind_tiny", vision_depth=3)
    assert "vision_num_blocks" in str(info.value) and "modalities" in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [{"vision_num_heads": 3}, {"imu_num_blocks": 0}, {"audio_drop_path": 1.5}, {"text_embed_dim": "64"}],
)
def test_invalid_override_values_raise(overrides):
    with pytest.raises(ModelError):
        build("imagebind_tiny", modalities=["depth"], **overrides)


def test_bad_build_options_raise():
    with pytest.raises(ModelError, match="init"):
        build("imagebind_tiny", init="xavier")
    with pytest.raises(ModelError, match="modalities"):
        build("imagebind_tiny", modalities=["smell"])
    with pytest.raises(ModelError, match="modalities"):
        build("imagebind_tiny", modalities=[])


def test_override_changes_geometry():
    model = build("imagebind_tiny", modalities=["imu"], imu_num_blocks=3, out_embed_dim=16, device="meta")
    assert len(model.modality_trunks["imu"].blocks) == 3
    assert model.state_dict()["modality_heads.imu.3.weight"].shape == (16, 32)
    assert model.config.imu_num_blocks == 3


def test_single_modality_build_allocates_only_that_tower():
    depth = build("imagebind_tiny", modalities=["depth"])
    assert depth.modalities == (Modality.DEPTH,)
    keys = list(depth.state_dict())
    assert keys and all(k.split(".")[1] == "depth" for k in keys)
    assert len(keys) == 9 + 14 * get_config("imagebind_tiny").depth_num_blocks
    # Init is keyed by (seed, state-dict key): the depth tower equals the full model's.
    full = build("imagebind_tiny", modalities=["depth", "imu"], seed=0)
    for key, value in depth.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    with pytest.raises(ModelError, match="not built"):
        depth.embed("vision", torch.zeros(1, 3, 224, 224))


def test_random_init_is_seeded_and_well_formed():
    a = build("imagebind_tiny", modalities=["imu"], seed=3).state_dict()
    b = build("imagebind_tiny", modalities=["imu"], seed=3).state_dict()
    c = build("imagebind_tiny", modalities=["imu"], seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["modality_preprocessors.imu.pos_embed"], c["modality_preprocessors.imu.pos_embed"])
    w = a["modality_trunks.imu.blocks.0.attn.in_proj_weight"]
    assert w.abs().max() <= 0.04 + 1e-7 and 0.012 < w.std() < 0.022
    assert torch.all(a["modality_trunks.imu.blocks.0.norm_1.weight"] == 1)
    assert torch.all(a["modality_trunks.imu.blocks.0.attn.in_proj_bias"] == 0)
    assert a["modality_trunks.imu.blocks.0.attn.bias_k"].abs().sum() > 0


def test_init_none_still_writes_constant_buffers():
    model = build("imagebind_tiny", modalities=["text", "audio"], init="none")
    mask = model.state_dict()["modality_preprocessors.text.mask"]
    assert torch.equal(torch.isinf(mask), torch.ones(77, 77, dtype=torch.bool).triu(1))
    assert torch.all(mask.tril() == 0)
    assert model.logit_scale("audio") == pytest.approx(20.0)


# ---------------------------------------------------------------------------------------------
# imagebind_tiny forward behaviour


def test_build_returns_eval_model(tiny):
    assert isinstance(tiny, nn.Module) and type(tiny).__name__ == "ImageBindModel"
    assert not tiny.training
    assert tiny.modalities == ALL_MODALITIES
    assert tiny.config == get_config("imagebind_tiny")


def test_embed_every_modality(tiny):
    with torch.no_grad():
        for name, x in _inputs(2).items():
            emb = tiny.embed(name, x)
            assert emb.shape == (2, 64), name
            assert torch.isfinite(emb).all(), name
            torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
            # Random-init vision is only weakly input-dependent; 1e-4 is still >1000x float noise.
            assert (emb[0] - emb[1]).abs().max() > 1e-4, f"{name}: rows collapsed"
        video = torch.randn(2, 3, 2, 224, 224)
        assert tiny.embed("vision", video).shape == (2, 64)


def test_batch_rows_are_independent(tiny):
    batch = _inputs(3, seed=1)
    with torch.no_grad():
        for name, x in batch.items():
            together = tiny.embed(name, x)
            for i in range(3):
                alone = tiny.embed(name, x[i : i + 1])
                torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=0, msg=name)


def test_token_counts_reach_the_trunk(tiny):
    seen: dict[str, int] = {}
    hooks = [
        tiny.modality_trunks[m].register_forward_pre_hook(lambda mod, args, m=m: seen.__setitem__(m, args[0].shape[1]))
        for m in tiny.modality_trunks
    ]
    try:
        with torch.no_grad():
            tiny(_inputs(1))
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"vision": 257, "text": 77, "audio": 229, "depth": 197, "thermal": 197, "imu": 251}


@pytest.mark.parametrize("dim", [64, 1280])
def test_image_conv_fold_equals_conv3d_on_repeated_frames(dim):
    torch.manual_seed(dim)
    stem = VisionStem(dim, patch=14, num_frames=2)
    nn.init.normal_(stem.proj[1].weight, std=0.02)
    image = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        folded = stem(image)
        clip = stem.proj[0](image)  # the reference path: repeat to 2 frames
        assert clip.shape == (2, 3, 2, 224, 224)
        reference = stem.proj[1](clip).flatten(2).transpose(1, 2)
    assert folded.shape == reference.shape == (2, 256, dim)
    assert (folded - reference).abs().max().item() < 2e-5


def test_image_embedding_equals_video_of_repeated_frame(tiny):
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        still = tiny.embed("vision", image)
        clip = tiny.embed("vision", image.unsqueeze(2).repeat(1, 1, 2, 1, 1))
        other = tiny.embed("vision", torch.stack([image, -image], dim=2))
    torch.testing.assert_close(still, clip, atol=1e-5, rtol=0)
    assert (still - other).abs().max() > 1e-4  # the second frame is not ignored


def test_text_pools_at_end_of_text(tiny):
    tokens = torch.zeros(1, 77, dtype=torch.long)
    tokens[0, :6] = torch.tensor([49406, 320, 1929, 269, 500, 49407])
    after = tokens.clone()
    after[0, 6:20] = torch.arange(1000, 1014)  # words after EOT must be invisible
    before = tokens.clone()
    before[0, 2] = 2368  # a different word before EOT must matter
    with torch.no_grad():
        base, changed_after, changed_before = (tiny.embed("text", t) for t in (tokens, after, before))
        as_int32 = tiny.embed("text", tokens.int())
    torch.testing.assert_close(base, changed_after, atol=1e-6, rtol=0)
    assert (base - changed_before).abs().max() > 1e-3
    torch.testing.assert_close(base, as_int32, atol=0, rtol=0)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    dim, heads, length = 32, 4, 9
    for add_bias_kv, masked in ((True, False), (False, True)):
        ours = SelfAttention(dim, heads, add_bias_kv=add_bias_kv)
        ref = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        for p in ref.parameters():
            nn.init.normal_(p, std=0.2)
        ours.load_state_dict(ref.state_dict(), strict=True)
        mask = torch.full((length, length), float("-inf")).triu(1) if masked else None
        x = torch.randn(3, length, dim)
        with torch.no_grad():
            expected, _ = ref(x, x, x, attn_mask=mask, need_weights=False)
            got = ours(x, mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_imu_patching_equals_unfold(tiny):
    captured = {}
    proj = tiny.modality_preprocessors["imu"].imu_stem.proj
    handle = proj.register_forward_pre_hook(lambda mod, args: captured.setdefault("x", args[0]))
    x = torch.randn(2, 6, 2000)
    try:
        with torch.no_grad():
            tiny.embed("imu", x)
    finally:
        handle.remove()
    reference = x.unfold(-1, 8, 8).permute(0, 2, 1, 3).reshape(2, 250, 48)
    assert torch.equal(captured["x"], reference)


def test_logit_scales(tiny):
    expected = {"vision": 1.0, "text": 1 / 0.07, "audio": 20.0, "depth": 5.0, "thermal": 10.0, "imu": 5.0}
    assert {m: tiny.logit_scale(m) for m in expected} == pytest.approx(expected, rel=1e-6)
    model = build("imagebind_tiny", modalities=["text"], init="none")
    assert model.logit_scale("text") == pytest.approx(1 / 0.07, rel=1e-6)  # written even without init
    state = model.state_dict()
    state["modality_postprocessors.text.1.log_logit_scale"] = torch.tensor(math.log(42.0))
    model.load_state_dict(state)
    assert model.logit_scale("text") == pytest.approx(42.0, rel=1e-6)
    state["modality_postprocessors.text.1.log_logit_scale"] = torch.tensor(math.log(500.0))
    model.load_state_dict(state)
    assert model.logit_scale("text") == pytest.approx(100.0)  # clipped like the reference


def test_strict_load_reproduces_outputs(tmp_path, tiny):
    path = tmp_path / "tiny.pth"
    torch.save(tiny.state_dict(), path)
    other = build("imagebind_tiny", seed=1, init="random")
    inputs = _inputs(2, seed=5)
    with torch.no_grad():
        expected = tiny(inputs)
        before = other(inputs)
        assert all((before[m] - expected[m]).abs().max() > 1e-3 for m in expected)
        result = other.load_state_dict(torch.load(path, weights_only=True), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        after = other(inputs)
    for m in expected:
        assert torch.equal(after[m], expected[m]), m


def test_tower_equals_embed(tiny):
    inputs = _inputs(2, seed=2)
    with torch.no_grad():
        for name, x in inputs.items():
            tower = tiny.tower(name)
            assert not tower.training
            assert torch.equal(tower(x), tiny.embed(name, x)), name
        video = torch.randn(2, 3, 2, 224, 224)
        assert torch.equal(tiny.tower("vision", video=True)(video), tiny.embed("vision", video))
    # The tower shares the model's weights rather than copying them.
    model_params = {id(p) for p in tiny.parameters()}
    tower_params = list(tiny.tower("imu").parameters())
    assert tower_params and all(id(p) in model_params for p in tower_params)


@pytest.mark.parametrize(
    "modality, bad, expected",
    [
        ("vision", torch.zeros(1, 3, 223, 224), r"\[B, 3, 224, 224\]"),
        ("vision", torch.zeros(3, 224, 224), r"\[B, 3, 224, 224\]"),
        ("text", torch.zeros(1, 77), r"int64 token tensor of shape \[B, 77\]"),
        ("text", torch.zeros(1, 76, dtype=torch.long), r"\[B, 77\]"),
        ("audio", torch.zeros(1, 3, 1, 128, 204), r"\[B, 1, 128, 204\]"),
        ("depth", torch.zeros(1, 3, 224, 224), r"\[B, 1, 224, 224\]"),
        ("thermal", torch.zeros(1, 1, 224, 224, dtype=torch.int64), r"\[B, 1, 224, 224\]"),
        ("imu", torch.zeros(1, 6, 1999), r"\[B, 6, 2000\]"),
        ("imu", torch.zeros(0, 6, 2000), r"\[B, 6, 2000\]"),
        ("imu", np.zeros((1, 6, 2000), np.float32), r"\[B, 6, 2000\]"),
        ("smell", torch.zeros(1, 3), "unknown modality"),
    ],
)
def test_bad_inputs_raise_model_error(tiny, modality, bad, expected):
    with pytest.raises(ModelError, match=expected):
        tiny.embed(modality, bad)


def test_image_tower_rejects_video_with_hint(tiny):
    with pytest.raises(ModelError, match="video=True"):
        tiny.tower("vision")(torch.zeros(1, 3, 2, 224, 224))
    with pytest.raises(ModelError, match="vision tower only"):
        tiny.tower("imu", video=True)


def test_meta_model_has_no_logit_values(huge_meta):
    with pytest.raises(ModelError, match="meta"):
        huge_meta.logit_scale("text")
    assert huge_meta.logit_scale("vision") == 1.0


# ---------------------------------------------------------------------------------------------
# ONNX export friendliness (the real exporter lives elsewhere)


@pytest.mark.parametrize("modality", ["imu", "text"])
def test_tower_exports_to_onnx_and_matches_onnxruntime(tiny, tmp_path, modality):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is needed to run the exported graph")
    tower = tiny.tower(modality)
    example = _inputs(2, seed=7)[modality]
    path = tmp_path / f"{modality}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            tower,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = _inputs(3, seed=8)[modality]  # a different batch size proves the dynamic axis
    (got,) = session.run(None, {"input": check.numpy()})
    with torch.no_grad():
        expected = tiny.embed(modality, check).numpy()
    assert got.shape == (3, 64)
    assert np.abs(got - expected).max() < 1e-4
