"""Recording folders: writer -> index -> deterministic replay; ``record()`` and ``edgebind record`` with Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("cv2", reason="OpenCV (sensors extra) writes and reads the recording's video and PNG files")
pytest.importorskip("soundfile", reason="soundfile (sensors extra) writes and reads the recording's WAV files")

from edgebind.errors import StreamError  # noqa: E402
from edgebind.modality import Modality  # noqa: E402
from edgebind.runtime.recording import RecordConfig, RecordingWriter, load_index, record  # noqa: E402
from edgebind.runtime.sources import Sample, SyntheticConfig, SyntheticSource, open_replay  # noqa: E402
from edgebind.runtime.sources.replay import ReplayClock, open_folder  # noqa: E402
from helpers import wait_for  # noqa: E402

def _wait(cond, timeout=10.0, what="condition"):
    wait_for(cond, timeout, what)




def _samples():
    """Hand-made samples of every recordable modality with interleaved, known timestamps."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(5):
        t = 100.0 + i * 0.1
        frame = np.zeros((32, 48, 3), np.uint8)
        frame[..., 0], frame[..., 1] = 40 * i, 120
        out.append(Sample("cam", Modality.VISION, t, t - 99.0, frame, i, {"format": "rgb"}))
        out.append(Sample("depth", Modality.DEPTH, t + 0.01, None, rng.uniform(0.3, 5.0, (12, 16)).astype(np.float32), i,
                          {"fx": 20.0, "baseline": 0.05}))
        out.append(Sample("lwir", Modality.THERMAL, t + 0.02, 7.0 + i, rng.integers(29000, 31000, (12, 16), dtype=np.uint16), i,
                          {"format": "y16", "kelvin_scale": 0.01}))
        out.append(Sample("mic", Modality.AUDIO, t + 0.03, None, rng.uniform(-0.5, 0.5, 1600).astype(np.float32), i, {"rate": 16000}))
        rows = rng.normal(size=(4, 6))
        out.append(Sample("imu", Modality.IMU, t + 0.04, 50.0 + i * 0.02, rows, i,
                          {"t": t + 0.04 + np.arange(4) * 0.005, "t_device": 50.0 + i * 0.02 + np.arange(4) * 0.005, "rate": 200.0}))
    return out


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rec") / "session"
    samples = _samples()
    with RecordingWriter(folder) as w:
        w.set_rate("cam", 10.0)
        for s in samples:
            w.write(s)
    return folder, samples


def _replay(folder, **kw):
    got = []
    sources = open_replay(folder, **kw)
    for s in sources:
        s.start(got.append)
    _wait(lambda: all(s.health().state == "finished" for s in sources), what="replay finished")
    for s in sources:
        s.stop()
    return got, sources


def test_index_lists_every_stream(recording):
    folder, _ = recording
    index = load_index(folder)
    streams = index["streams"]
    assert set(streams) == {"cam", "depth", "lwir", "mic", "imu"}
    assert streams["cam"]["kind"] == "video" and (folder / streams["cam"]["files"]["data"]).name == "cam.mp4"
    assert streams["depth"]["meta"]["format"] == "npy" and (folder / "depth" / "000004.npy").exists()
    assert streams["lwir"]["meta"]["format"] == "png16" and (folder / "lwir" / "000000.png").exists()
    assert streams["mic"]["meta"]["t0"] == pytest.approx(100.03) and streams["mic"]["meta"]["samples"] == 8000
    assert streams["imu"]["meta"]["rows"] == 20
    assert all(streams[n]["count"] == 5 for n in streams)
    header = (folder / "imu.csv").read_text().splitlines()[0]
    assert header == "t,ax,ay,az,gx,gy,gz,t_device,seq"


def test_folder_replay_roundtrip_is_exact_in_timestamp_order(recording):
    folder, written = recording
    got, sources = _replay(folder)
    assert {s.name for s in sources} == {"cam", "depth", "lwir", "mic", "imu"}
    times = [s.t_capture for s in got]
    assert times == sorted(times)  # one global order across the five sources
    by = {name: [s for s in got if s.source == name] for name in ("cam", "depth", "lwir", "mic", "imu")}
    ref = {name: [s for s in written if s.source == name] for name in by}
    for name in ("depth", "lwir", "imu"):
        assert len(by[name]) == 5
        for a, b in zip(by[name], ref[name]):
            np.testing.assert_array_equal(a.data, b.data)
            assert a.t_capture == b.t_capture and a.t_device == b.t_device
    np.testing.assert_array_equal(np.concatenate([s.meta["t"] for s in by["imu"]]), np.concatenate([s.meta["t"] for s in ref["imu"]]))
    assert by["lwir"][0].meta["format"] == "y16" and by["lwir"][0].meta["kelvin_scale"] == 0.01
    assert by["depth"][0].meta["fx"] == 20.0
    audio = np.concatenate([s.data for s in by["mic"]])
    np.testing.assert_array_equal(audio, np.concatenate([s.data for s in ref["mic"]]))
    assert by["mic"][0].t_capture == pytest.approx(100.03) and by["mic"][1].t_capture == pytest.approx(100.13)
    assert len(by["cam"]) == 5
    for a, b in zip(by["cam"], ref["cam"]):  # mp4v is lossy: close, not equal
        assert np.abs(a.data.astype(int) - b.data.astype(int)).mean() < 6
        assert a.t_device == b.t_device


def test_replay_is_deterministic(recording):
    folder, _ = recording
    runs = [[(s.source, s.seq, s.t_capture) for s in _replay(folder)[0]] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 25


def test_realtime_replay_paces_and_maps_times(recording):
    folder, _ = recording
    got = []
    arrivals = []

    def sink(s):
        arrivals.append(time.monotonic())
        got.append(s)

    sources = open_replay(folder, realtime=True, speed=4.0, streams=["imu", "depth"])
    for s in sources:
        s.start(sink)
    _wait(lambda: all(s.health().state == "finished" for s in sources), what="realtime replay")
    assert [s.meta["t_recorded"] for s in got] == sorted(s.meta["t_recorded"] for s in got)
    t0, w0 = got[0].meta["t_recorded"], got[0].t_capture
    for s, arrived in zip(got, arrivals):
        assert s.t_capture == pytest.approx(w0 + (s.meta["t_recorded"] - t0) / 4.0)
        assert arrived >= s.t_capture - 1e-3  # never delivered ahead of its schedule


def test_unstarted_source_does_not_block_the_others(recording):
    folder, _ = recording
    clock = ReplayClock(start_grace_s=0.1)
    sources = open_folder(folder, streams=["imu", "depth"], clock=clock)
    got = []
    sources[0].start(got.append)  # depth is never started
    _wait(lambda: sources[0].health().state == "finished", what="imu replay without depth")
    assert len(got) == 5
    sources[1].stop()


def test_incomplete_recording_is_refused(tmp_path):
    w = RecordingWriter(tmp_path / "r")
    w.write(_samples()[1])  # a depth frame, never closed: no index
    with pytest.raises(StreamError, match="recording.json: not found"):
        load_index(tmp_path / "r")
    w.close()
    assert load_index(tmp_path / "r")["streams"]["depth"]["count"] == 1
    with pytest.raises(Exception, match="already holds a recording"):
        RecordingWriter(tmp_path / "r")


def test_audio_gap_is_padded_so_sample_times_stay_true(tmp_path):
    chunk = np.ones(1600, np.float32) * 0.25
    with RecordingWriter(tmp_path / "r") as w:
        w.write(Sample("mic", Modality.AUDIO, 10.0, None, chunk, 0, {"rate": 16000}))
        w.write(Sample("mic", Modality.AUDIO, 10.3, None, chunk, 1, {"rate": 16000}))  # 0.2 s of audio lost
    meta = load_index(tmp_path / "r")["streams"]["mic"]["meta"]
    assert meta["padded_samples"] == 3200 and meta["samples"] == 6400
    got, _ = _replay(tmp_path / "r")
    audio = np.concatenate([s.data for s in got])
    assert audio[1600:4800].max() == 0.0 and audio[4800] == pytest.approx(0.25)


def test_record_synthetic_sources_then_replay(tmp_path):
    sources = [SyntheticSource(SyntheticConfig(modality=m, rate_hz=50.0, count=10), name=m)
               for m in ("vision", "thermal", "imu", "audio")]
    result = record(RecordConfig(out=str(tmp_path / "rec")), sources=sources)
    assert not result.interrupted
    assert {n: s["count"] for n, s in result.streams.items()} == {"vision": 10, "thermal": 10, "imu": 10, "audio": 10}
    assert all(h["state"] == "finished" for h in result.health.values())
    got, _ = _replay(tmp_path / "rec")
    assert sum(1 for s in got if s.source != "audio") == 30
    # Audio is re-chunked on replay (0.1 s chunks): 10 chunks of 320 samples -> 2 chunks of 1600.
    assert sum(len(s.data) for s in got if s.source == "audio") == 3200
    thermal = [s for s in got if s.source == "thermal"]
    np.testing.assert_array_equal(thermal[3].data, SyntheticSource(SyntheticConfig(modality="thermal")).make(3)[0])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_record_ctrl_c_flushes_a_complete_recording(tmp_path, sig):
    out = tmp_path / "rec"
    cmd = [sys.executable, "-m", "edgebind", "record", "-s", "cam=synthetic:vision;rate_hz=30",
           "-s", "synthetic:imu;rate_hz=20", "-s", "synthetic:audio;rate_hz=10", "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _wait(lambda: (out / "cam.timestamps.csv").exists() and (out / "synthetic_imu.csv").exists(), timeout=30,
              what="recording to start")
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=10)
        stop_s = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["interrupted"] is True
    index = load_index(out)
    cam_rows = (out / "cam.timestamps.csv").read_text().splitlines()
    assert index["streams"]["cam"]["count"] == len(cam_rows) - 1 > 0
    imu_rows = (out / "synthetic_imu.csv").read_text().splitlines()
    assert index["streams"]["synthetic_imu"]["meta"]["rows"] == len(imu_rows) - 1 > 0
    assert stop_s < 8.0, f"stopping took {stop_s:.2f} s"  # generous: a hang detector, not a benchmark
    got, _ = _replay(out)
    assert sum(1 for s in got if s.source == "cam") == index["streams"]["cam"]["count"]


def test_open_replay_rejects_unknown_paths(tmp_path):
    with pytest.raises(StreamError, match="no such recording"):
        open_replay(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StreamError, match="neither a recording folder"):
        open_replay(tmp_path / "empty")
