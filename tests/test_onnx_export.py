"""Per-tower ONNX export of imagebind_tiny: files, names, ORT parity, manifest, idempotence, atomicity."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="ONNX export needs the 'export' extra (torch)")
onnx = pytest.importorskip("onnx", reason="ONNX export needs the 'export' extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="parity checks need onnxruntime")

from edgebind.bundle import load_manifest, verify_files  # noqa: E402
from edgebind.errors import ConfigError, ExportError  # noqa: E402
from edgebind.export import checks  # noqa: E402
from edgebind.export.onnx_export import export_model, export_tower, tower_input_spec  # noqa: E402
from edgebind.models.config import get_config  # noqa: E402
from edgebind.models.imagebind import build  # noqa: E402

MODEL = "imagebind_tiny"
ALL = ["vision", "text", "audio", "depth", "thermal", "imu"]
INPUTS = {
    "vision": ("image", ["batch", 3, 224, 224], "float32"),
    "text": ("tokens", ["batch", 77], "int64"),
    "audio": ("audio_melspec", ["batch", 1, 128, 204], "float32"),
    "depth": ("depth", ["batch", 1, 224, 224], "float32"),
    "thermal": ("thermal", ["batch", 1, 224, 224], "float32"),
    "imu": ("imu", ["batch", 6, 2000], "float32"),
}
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    manifest = export_model(MODEL, ALL, out, random_init=True, seed=0, n_samples=3)
    return out, manifest


@pytest.fixture(scope="module")
def reference_model():
    # Built with all towers at once: per-tensor seeding must make it equal the per-tower builds.
    return build(MODEL, seed=0)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch(model, modality, x, video=False):
    with torch.no_grad():
        return model.tower(modality, video=video)(torch.from_numpy(x)).numpy()


def _files(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


@pytest.mark.parametrize("modality", ALL)
def test_tower_file_interface_and_parity(bundle, reference_model, modality):
    out, manifest = bundle
    path = out / f"{MODEL}.{modality}.fp32.onnx"
    assert manifest.artifact(modality, "fp32").file == path.name
    session = _session(path)
    name, shape, dtype = INPUTS[modality]
    [inp], [outp] = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, inp.type) == (name, shape, ORT_TYPES[dtype])
    assert (outp.name, outp.shape) == ("embedding", ["batch", get_config(MODEL).out_embed_dim])
    proto = onnx.load(str(path))
    assert "LayerNormalization" in {n.op_type for n in proto.graph.node}
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17

    spec = tower_input_spec(get_config(MODEL), modality)
    for batch in (1, 3):
        x = checks.sample_inputs(spec, batch, seed=100 + batch)  # not the rows the export checked
        got = session.run(None, {name: x})[0]
        want = _torch(reference_model, modality, x)
        assert got.shape == (batch, 64)
        assert np.abs(got - want).max() < 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_manifest_written_and_valid(bundle):
    out, manifest = bundle
    assert load_manifest(out) == manifest
    assert list(manifest.towers) == ALL
    assert len(verify_files(manifest, out)) == 6
    assert (manifest.model, manifest.checkpoint_sha256, manifest.seed) == (MODEL, "random-init", 0)
    assert manifest.model_config == get_config(MODEL).to_dict()
    assert manifest.created_by.opset == 17 and manifest.created_by.torch == torch.__version__
    scales = {m: manifest.tower(m).logit_scale for m in ALL}
    assert scales == pytest.approx({"vision": 1.0, "text": 1 / 0.07, "audio": 20.0, "depth": 5.0,
                                    "thermal": 10.0, "imu": 5.0})
    for m in ALL:
        art = manifest.artifact(m, "fp32")
        assert art.data_file is None and art.size_bytes == (out / art.file).stat().st_size
        assert art.fidelity.n_samples == 3 and art.fidelity.max_abs_diff < 1e-4
        assert art.fidelity.min_cosine > 0.99999 and art.fidelity.top1_agreement == 1.0
        assert manifest.tower(m).input.name == INPUTS[m][0]
        assert (out / art.file).stat().st_mode & 0o044 == 0o044  # readable by the device's runtime user
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp folders left


def test_rerun_is_a_no_op(bundle, monkeypatch, caplog):
    out, manifest = bundle
    before = _files(out)

    def no_build(*args, **kwargs):
        raise AssertionError("an up-to-date tower was rebuilt")

    monkeypatch.setattr("edgebind.models.imagebind.build", no_build)
    with caplog.at_level(logging.INFO, logger="edgebind.export"):
        again = export_model(MODEL, ALL, out, random_init=True, seed=0, n_samples=3)
    assert again == manifest
    assert _files(out) == before
    up_to_date = [r.getMessage() for r in caplog.records if "up to date" in r.getMessage()]
    assert len(up_to_date) == 6


def test_checkpoint_export_and_interrupted_re_export(tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.pth"
    torch.save(build(MODEL, modalities=["depth"], seed=7).state_dict(), ckpt)
    out = tmp_path / "bundle"
    first = export_model(MODEL, "depth", out, checkpoint=ckpt, n_samples=2)
    assert first.checkpoint_sha256 != "random-init" and first.seed is None
    # The weights come from the checkpoint (seed 7), not from build()'s default seed.
    x = checks.sample_inputs(first.tower("depth").input, 2, seed=5)
    got = _session(out / first.artifact("depth", "fp32").file).run(None, {"depth": x})[0]
    assert np.abs(got - _torch(build(MODEL, modalities=["depth"], seed=7), "depth", x)).max() < 1e-4
    assert np.abs(got - _torch(build(MODEL, modalities=["depth"], seed=0), "depth", x)).max() > 1e-3
    before = _files(out)

    def save_half_then_fail(proto, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(proto.SerializeToString()[:1000])
        raise OSError("No space left on device")

    monkeypatch.setattr(onnx, "save_model", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_model(MODEL, "depth", out, random_init=True, seed=1, n_samples=2)
    assert _files(out) == before  # old model, old manifest, and no temp folder left behind
    monkeypatch.undo()

    second = export_model(MODEL, "depth", out, random_init=True, seed=1, n_samples=2)
    assert (second.checkpoint_sha256, second.seed) == ("random-init", 1)
    assert second.artifact("depth", "fp32").sha256 != first.artifact("depth", "fp32").sha256
    verify_files(load_manifest(out), out)


def test_external_data_in_one_file(tmp_path):
    model = build(MODEL, modalities=["depth"], seed=0)
    rows = np.linspace(-2, 2, 2 * 224 * 224, dtype=np.float32).reshape(2, 1, 224, 224)
    record = export_tower(model, "depth", tmp_path, model_name=MODEL, external_data_threshold=1000, sample_inputs=rows)
    art = record.artifacts[0]
    assert art.fidelity.n_samples == 2  # the given rows were used
    assert art.data_file == f"{MODEL}.depth.fp32.onnx.data"
    assert sorted(os.listdir(tmp_path)) == [art.file, art.data_file]
    assert art.data_size_bytes > 100_000 > art.size_bytes
    proto = onnx.load(str(tmp_path / art.file), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    assert locations == {art.data_file}
    checks.check_onnx_model(tmp_path / art.file)
    got = _session(tmp_path / art.file).run(None, {"depth": rows})[0]
    assert np.abs(got - _torch(model, "depth", rows)).max() < 1e-4

    # Re-exported small enough to be inline: the stale data file goes.
    record = export_tower(model, "depth", tmp_path, model_name=MODEL, n_samples=2)
    assert record.artifacts[0].data_file is None
    assert sorted(os.listdir(tmp_path)) == [art.file]


def test_video_tower(tmp_path, reference_model):
    record = export_tower(reference_model, "vision", tmp_path, video=True, model_name=MODEL, n_samples=2)
    assert record.video and record.input.shape == ("batch", 3, 2, 224, 224)
    path = tmp_path / f"{MODEL}.vision-video.fp32.onnx"
    session = _session(path)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("video", ["batch", 3, 2, 224, 224])]
    assert "LayerNormalization" in checks.op_types(path)
    for batch in (1, 3):
        x = checks.sample_inputs(record.input, batch, seed=batch)
        got = session.run(None, {"video": x})[0]
        assert np.abs(got - _torch(reference_model, "vision", x, video=True)).max() < 1e-4


def test_parity_check_catches_a_different_model(bundle):
    out, manifest = bundle
    other = build(MODEL, modalities=["depth"], seed=3).tower("depth")
    spec = manifest.tower("depth").input
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        checks.check_parity(other, out / manifest.artifact("depth", "fp32").file, spec, checks.sample_inputs(spec, 2))


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint=PATH, or random_init=True"):
        export_model(MODEL, "depth", tmp_path)
    model = build(MODEL, modalities=["depth"], seed=0)
    with pytest.raises(ConfigError, match="opset: expected 17 or higher"):
        export_tower(model, "depth", tmp_path, model_name=MODEL, opset=16)
    with pytest.raises(ConfigError, match="video=True applies to the vision tower only"):
        export_tower(model, "depth", tmp_path, model_name=MODEL, video=True)
    with pytest.raises(ExportError, match=r"expected shape \[N, 1, 224, 224\], got \[2, 224, 224\]"):
        export_tower(model, "depth", tmp_path, model_name=MODEL, sample_inputs=np.zeros((2, 224, 224)))
    with pytest.raises(ConfigError, match="model_name"):
        export_tower(model, "depth", tmp_path)
    assert os.listdir(tmp_path) == []


def test_compare_embeddings_measures_what_it_says():
    ref = np.eye(3, 4, dtype=np.float32)
    cand = ref.copy()
    cand[2] = [0.0, 1.0, 0.0, 0.0]  # row 2 now equals row 1: cosine 0 with its own reference
    fid = checks.compare_embeddings(ref, cand, reference_name="r")
    assert fid.max_abs_diff == 1.0 and fid.min_cosine == pytest.approx(0.0)
    assert fid.mean_cosine == pytest.approx(2 / 3) and fid.top1_agreement == pytest.approx(2 / 3)
    with pytest.raises(ExportError, match="NaN/inf"):
        checks.compare_embeddings(ref, np.full_like(ref, np.nan), reference_name="r")
