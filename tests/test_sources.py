"""Source contract: counters, faults, retry/backoff, stop; camera / thermal / depth / microphone with fakes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgebind.errors import ConfigError
from edgebind.modality import Modality
from edgebind.runtime.sources import (
    CameraConfig,
    CameraSource,
    ClockConfig,
    ClockGuard,
    DepthCameraConfig,
    DepthSource,
    MicrophoneConfig,
    MicrophoneSource,
    RetryPolicy,
    SyntheticConfig,
    SyntheticSource,
    ThermalCameraConfig,
    ThermalSource,
    open_source,
    stop_all,
    to_celsius,
)
from helpers import wait_for

FAST_RETRY = RetryPolicy(initial_s=0.01, max_s=0.05)



def _run_to_end(src, timeout=5.0):
    out = []
    src.start(out.append)
    wait_for(lambda: src.health().state in ("finished", "failed"), timeout, "end of stream")
    src.stop()
    return out


# ------------------------------------------------------------------ base contract


def test_retry_policy_backoff_doubles_and_caps():
    p = RetryPolicy()
    assert [p.delay(i) for i in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ConfigError, match="initial_s"):
        RetryPolicy(initial_s=0.0)


def test_clock_guard_reject_resync_and_rebase():
    g = ClockGuard(ClockConfig(max_jump_s=1.0, resync_after=3))
    assert [g.check(t) for t in (0.0, 0.1, 0.05, 0.2)] == [True, True, False, True]  # backwards: rejected
    # A sensor that restarts its clock at 0: three consistent samples adopt the new timeline.
    assert [g.check(t) for t in (0.0, 0.01, 0.02, 0.03)] == [False, False, True, True]
    assert g.jumps == 4
    r = ClockGuard(ClockConfig(max_jump_s=1.0, policy="rebase"))
    assert [r.check(t) for t in (0.0, 50.0, 50.1)] == [True, True, True] and r.jumps == 1
    assert ClockGuard().check(None) is True


def test_synthetic_counts_nan_and_clock_jumps_exactly():
    src = SyntheticSource(SyntheticConfig(modality="depth", count=20, realtime=False, nan_every=5, clock_jump_at=(7,)))
    out = _run_to_end(src)
    h = src.health()
    # NaN in samples 4, 9, 14, 19; a +100 s jump at 7 -> 5 rejected, 15 delivered.
    assert (h.samples, h.rejected, h.clock_jumps, h.state) == (15, 5, 1, "finished")
    assert src.finished
    assert [s.seq for s in out] == list(range(15))
    assert all(s.modality is Modality.DEPTH and s.data.dtype == np.float32 and s.data.ndim == 2 for s in out)
    assert all(np.isfinite(s.data).all() and "fx" in s.meta and "baseline" in s.meta for s in out)
    t = [s.t_capture for s in out]
    assert t == sorted(t)


@pytest.mark.parametrize("modality,shape,dtype", [("vision", (48, 64, 3), np.uint8), ("thermal", (48, 64), np.uint16),
                                                  ("audio", (1600,), np.float32), ("imu", (20, 6), np.float64)])
def test_synthetic_data_follows_the_contract(modality, shape, dtype):
    out = _run_to_end(SyntheticSource(SyntheticConfig(modality=modality, count=3, realtime=False, rate_hz=10)))
    assert len(out) == 3 and all(s.data.shape == shape and s.data.dtype == dtype for s in out)
    if modality == "imu":
        assert out[0].meta["t"].shape == (20,)
    if modality == "audio":
        assert out[0].meta["rate"] == 16000


def test_disconnect_retries_with_backoff_and_recovers():
    src = SyntheticSource(SyntheticConfig(modality="imu", count=10, realtime=False, fail_at=(3, 6)), retry=FAST_RETRY)
    out = _run_to_end(src)
    h = src.health()
    assert (h.samples, h.errors, h.reconnects, h.state) == (10, 2, 2, "finished")
    assert "simulated disconnect before sample 6" in h.last_error
    assert [s.seq for s in out] == list(range(10))


def test_gives_up_after_max_attempts():
    class Broken(SyntheticSource):
        def _open(self):
            raise OSError("no such device")

    src = Broken(SyntheticConfig(), retry=RetryPolicy(initial_s=0.01, max_s=0.01, max_attempts=3))
    src.start(lambda s: None)
    wait_for(lambda: src.health().state == "failed", what="failed state")
    h = src.health()
    assert h.errors == 3 and h.samples == 0 and "no such device" in h.last_error and not h.healthy
    src.stop()


def test_one_failing_source_does_not_stop_the_others():
    bad = SyntheticSource(SyntheticConfig(modality="audio", rate_hz=100, fail_at=tuple(range(0, 1000))),
                          name="bad", retry=FAST_RETRY)
    good = SyntheticSource(SyntheticConfig(modality="vision", rate_hz=100), name="good")
    got = {"bad": 0, "good": 0}
    lock = threading.Lock()

    def sink(s):
        with lock:
            got[s.source] += 1

    bad.start(sink)
    good.start(sink)
    wait_for(lambda: got["good"] >= 10 and bad.health().errors >= 3, what="good samples while bad retries")
    assert bad.health().state in ("retrying", "ok")
    assert good.health().state == "ok" and good.health().errors == 0
    stop_all([bad, good], timeout=1.0)
    assert {bad.health().state, good.health().state} == {"stopped"}


def test_sink_exception_is_counted_not_fatal():
    calls = []

    def sink(s):
        calls.append(s.seq)
        if s.seq == 1:
            raise RuntimeError("consumer bug")

    src = SyntheticSource(SyntheticConfig(count=4, realtime=False))
    src.start(sink)
    wait_for(lambda: src.health().state == "finished")
    h = src.health()
    assert calls == [0, 1, 2, 3] and h.errors == 1 and "consumer bug" in h.last_error


def test_stop_all_is_prompt_and_idempotent():
    srcs = [SyntheticSource(SyntheticConfig(modality=m, rate_hz=5), name=m) for m in ("vision", "audio", "imu")]
    for s in srcs:
        s.start(lambda s: None)
    wait_for(lambda: all(s.health().samples >= 1 for s in srcs))
    done = threading.Event()
    threading.Thread(target=lambda: (stop_all(srcs, timeout=1.0), done.set()), daemon=True).start()
    assert done.wait(2.0)
    for s in srcs:
        s.stop()  # again: no error
        assert s.health().state == "stopped"
    with pytest.raises(RuntimeError, match="already started"):
        srcs[0].start(lambda s: None)


# ------------------------------------------------------------------ OpenCV cameras


def _write_video(path, frames, fps=10):
    cv2 = pytest.importorskip("cv2", reason="OpenCV (sensors extra) is needed for camera sources")
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()


def test_camera_reads_a_video_file_as_rgb(tmp_path):
    frames = [np.zeros((64, 80, 3), np.uint8) for _ in range(6)]
    for i, f in enumerate(frames):
        f[..., 0] = 200  # red
        f[..., 2] = 20 * i
    _write_video(tmp_path / "clip.mp4", frames)
    out = _run_to_end(CameraSource(CameraConfig(target=str(tmp_path / "clip.mp4"))))
    assert len(out) == 6
    assert all(s.data.shape == (64, 80, 3) and s.data.dtype == np.uint8 for s in out)
    assert abs(float(out[0].data[..., 0].mean()) - 200) < 8 and float(out[0].data[..., 1].mean()) < 8
    assert out[-1].t_device is not None and out[-1].t_device > out[0].t_device


class FakeCapture:
    """Stands in for cv2.VideoCapture: a list of frames, then failures."""

    def __init__(self, frames, opened=True):
        self.frames, self.opened, self.props = list(frames), opened, {}

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self):
        self.opened = False


def test_camera_device_failure_reconnects_and_rejects_odd_frames():
    pytest.importorskip("cv2", reason="OpenCV (sensors extra) is needed for camera sources")
    good = np.full((4, 6, 3), 7, np.uint8)
    sessions = [[good, good, np.zeros((5, 6, 3), np.uint8), good], [], [good] * 3]
    caps = []

    def factory(target, api):
        frames = sessions.pop(0) if sessions else []
        caps.append(FakeCapture(frames, opened=True))
        return caps[-1]

    src = CameraSource(CameraConfig(target="3", max_read_failures=2), capture_factory=factory, retry=FAST_RETRY)
    out = []
    src.start(out.append)
    wait_for(lambda: src.health().samples >= 6, what="frames after reconnect")
    src.stop()
    h = src.health()
    assert h.rejected == 1 and h.reconnects >= 2 and h.errors >= 2
    assert all(s.data.shape == (4, 6, 3) for s in out)


def test_thermal_capture_asks_for_y16_and_reports_radiometry():
    cv2 = pytest.importorskip("cv2", reason="OpenCV (sensors extra) is needed for thermal sources")
    raw = np.arange(12, dtype=np.uint16).reshape(3, 4) + 30000
    caps = []
    src = ThermalSource(ThermalCameraConfig(target="1", radiometric="centikelvin", max_read_failures=1),
                        capture_factory=lambda t, a: caps.append(FakeCapture([raw, raw.view(np.uint8).reshape(3, 4, 2)])) or caps[-1],
                        retry=FAST_RETRY)
    out = []
    src.start(out.append)
    wait_for(lambda: src.health().samples >= 2, what="thermal frames")
    src.stop()
    assert caps[0].props[cv2.CAP_PROP_CONVERT_RGB] == 0
    assert caps[0].props[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter_fourcc(*"Y16 ")
    for s in out[:2]:
        assert s.meta["format"] == "y16" and s.data.dtype == np.uint16
        np.testing.assert_array_equal(s.data, raw)
    np.testing.assert_allclose(to_celsius(out[0])[0, 0], 300.0 - 273.15, atol=1e-3)


@pytest.mark.parametrize("frame,fmt", [
    (np.arange(12, dtype=np.uint16).reshape(3, 4), "y16"),
    (np.arange(24, dtype=np.uint8).reshape(3, 4, 2), "y16"),
    (np.full((3, 4), 9, np.uint8), "u8"),
    (np.dstack([np.full((3, 4), 5, np.uint8)] * 3), "u8"),
    (np.dstack([np.zeros((3, 4), np.uint8), np.ones((3, 4), np.uint8), np.zeros((3, 4), np.uint8)]), None),
])
def test_thermal_convert_each_layout(frame, fmt):
    cv2 = pytest.importorskip("cv2", reason="OpenCV (sensors extra) is needed for thermal sources")
    src = ThermalSource(ThermalCameraConfig(width=4, height=3))
    res = src._convert(cv2, frame)
    if fmt is None:
        assert res is None and src.health().rejected == 1
    else:
        data, meta = res
        assert meta["format"] == fmt and data.shape == (3, 4)
        assert data.dtype == (np.uint16 if fmt == "y16" else np.uint8)
    flat = np.arange(12, dtype=np.uint16).reshape(3, 4)
    data, meta = src._convert(cv2, flat.reshape(1, -1).view(np.uint8))
    np.testing.assert_array_equal(data, flat)


def test_depth_files_backend_metres_and_rejects(tmp_path):
    folder = tmp_path / "depth"
    folder.mkdir()
    np.save(folder / "000.npy", np.full((4, 5), 1.5, np.float32))
    np.save(folder / "001.npy", np.full((4, 5), 2000, np.uint16))  # millimetres
    bad = np.full((4, 5), 1.0, np.float32)
    bad[0, 0] = np.nan
    np.save(folder / "002.npy", bad)
    (folder / "003.npy").write_bytes(b"not a numpy file")
    src = DepthSource(DepthCameraConfig(target=str(folder), fx=500.0, baseline=0.05, pace=False))
    out = _run_to_end(src)
    assert [float(s.data[0, 0]) for s in out] == [1.5, 2.0]
    assert all(s.data.dtype == np.float32 and s.meta["fx"] == 500.0 and s.meta["baseline"] == 0.05 for s in out)
    assert src.health().rejected == 2 and src.health().state == "finished"


# ------------------------------------------------------------------ microphone


class FakeAudioStream:
    """Calls the sounddevice-style callback from a thread with a 48 kHz sine; flags one overflow."""

    def __init__(self, samplerate, blocksize, device, channels, dtype, callback):
        self.rate, self.cb, self.channels = samplerate, callback, channels
        self.block = 480
        self.active = False
        self._stop = threading.Event()

    def start(self):
        self.active = True

        def run():
            k = 0
            while not self._stop.is_set() and k < 200:
                t = (np.arange(self.block) + k * self.block) / self.rate
                x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[:, None].repeat(self.channels, 1)
                status = type("S", (), {"input_overflow": k == 3})()
                info = type("T", (), {"inputBufferAdcTime": 10.0 + k * 0.01, "currentTime": 10.005 + k * 0.01})()
                self.cb(x, self.block, info, status)
                k += 1
                time.sleep(0.001)
            self.active = False

        threading.Thread(target=run, daemon=True).start()

    def stop(self):
        self._stop.set()

    def close(self):
        self.active = False


def test_microphone_resamples_to_16k_and_counts_overflows():
    pytest.importorskip("soxr", reason="soxr (sensors extra) resamples microphone audio")
    src = MicrophoneSource(MicrophoneConfig(rate=48000, chunk_s=0.02), stream_factory=FakeAudioStream, retry=FAST_RETRY)
    out = []
    src.start(out.append)
    wait_for(lambda: src.health().errors >= 1, what="fake stream end (treated as disconnect)")
    src.stop()
    assert src.overflows == 1 and src.health().dropped >= 1
    x = np.concatenate([s.data for s in out])
    assert all(s.meta["rate"] == 16000 and s.data.ndim == 1 for s in out)
    # 200 blocks x 480 samples at 48 kHz = 2 s -> about 32000 samples at 16 kHz (minus the resampler delay).
    assert 30000 < len(x) <= 32000
    segment = x[4000:20000]
    peak_hz = np.argmax(np.abs(np.fft.rfft(segment))) * 16000 / len(segment)
    assert abs(peak_hz - 1000) <= 2  # the 1 kHz tone survived resampling
    assert out[0].t_device == pytest.approx(10.0)
    assert all(b.t_capture >= a.t_capture for a, b in zip(out, out[1:]))


# ------------------------------------------------------------------ specs


def test_open_source_specs():
    cam = open_source("front=camera:0;width=1280;height=720")
    assert cam.name == "front" and cam.config.width == 1280 and cam.modality is Modality.VISION
    assert open_source("csi:1").config.api == "gstreamer"
    assert open_source("thermal:/dev/video2;radiometric=centikelvin").config.radiometric == "centikelvin"
    assert open_source("synthetic:imu;fail_at=1|2").config.fail_at == (1, 2)
    imu = open_source("imu:/dev/ttyACM0;baudrate=921600;columns=ax,ay,az,gx,gy,gz")
    assert imu.config.baudrate == 921600 and imu.config.column_names[0] == "ax"
    with pytest.raises(ConfigError, match="unknown option 'fps2'"):
        open_source("camera:0;fps2=3")
    with pytest.raises(ConfigError, match="kind one of"):
        open_source("lidar:0")
    with pytest.raises(ConfigError, match="not a valid int"):
        open_source("imu:/dev/x;baudrate=fast")
