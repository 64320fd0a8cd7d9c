"""Runtime building blocks: windows (bounded, newest wins, same tensors as the preprocessing), fusion,
recognition with hysteresis, latency reservoirs."""

from __future__ import annotations

import numpy as np
import pytest

from edgebind.errors import ConfigError
from edgebind.labels import LabelBank
from edgebind.modality import Modality
from edgebind.preprocess import audio, depth, image, imu, thermal, video
from edgebind.runtime.fusion import FusionConfig, fuse
from edgebind.runtime.metrics import LatencyStats, RuntimeMetrics, format_latency_table
from edgebind.runtime.recognition import HysteresisConfig, HysteresisTracker, Recognizer
from edgebind.runtime.scheduler import Lane
from edgebind.runtime.sources.base import Sample
from edgebind.runtime.windows import (
    AudioWindow,
    FrameWindow,
    ImuWindow,
    VideoWindow,
    WindowConfig,
    make_window,
)

RNG = np.random.default_rng(0)


def sample(modality: str, data: np.ndarray, seq: int, t_capture: float, **meta) -> Sample:
    return Sample("src", Modality(modality), t_capture, None, data, seq, meta)


def frames(n: int, h: int = 40, w: int = 50) -> list[np.ndarray]:
    return [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_image_window_newest_wins_and_counts_stale_and_decimated():
    cfg = image.ImageConfig(size=32, crop_size=32)
    win = FrameWindow(Modality.VISION, cfg)
    assert win.take() is None and not win.ready
    imgs = frames(5)
    for i, f in enumerate(imgs):
        assert win.push(sample("vision", f, i, 0.1 * i), 0.1 * i)
    got = win.take()
    assert got is not None and got.seq == 4 and got.t_data == pytest.approx(0.4)
    np.testing.assert_array_equal(got.batch, image.preprocess(imgs[-1], cfg)[None])
    assert win.stale == 4 and win.decimated == 0  # due since the start: every replaced frame was overdue
    assert win.take() is None  # nothing new
    win.due_at = 10.0  # the next slot is at t = 10: frames replaced before it are rate decimation, not drops
    for i, f in enumerate(frames(3)):
        win.push(sample("vision", f, 5 + i, 1.0 + i), 1.0 + i)
    assert (win.stale, win.decimated) == (4, 2)
    assert win.buffered_bytes == imgs[0].nbytes  # one frame held, whatever was pushed


def test_frame_window_rejects_bad_samples_without_raising():
    win = FrameWindow(Modality.VISION, image.ImageConfig(size=32, crop_size=32))
    assert not win.push(sample("vision", np.zeros((4, 4, 7), np.uint8), 0, 0.0), 0.0)
    assert not win.push(sample("vision", np.array(["x"]), 1, 0.0), 0.0)
    assert win.rejected == 2 and not win.ready


def test_video_window_pairs_the_last_two_frames():
    record = {"config_class": "ImageConfig", "config": image.ImageConfig(size=32, crop_size=32).to_dict()}
    win = make_window("vision", ("batch", 3, 2, 32, 32), record)
    assert isinstance(win, VideoWindow)
    imgs = frames(4)
    for i, f in enumerate(imgs):
        win.push(sample("vision", f, i, 0.1 * i), 0.1 * i)
    got = win.take()
    vcfg = video.VideoConfig(size=32, crop_size=32)
    expected = np.stack([video.preprocess_frame(imgs[2], vcfg), video.preprocess_frame(imgs[3], vcfg)], axis=1)
    assert got.batch.shape == (1, 3, 2, 32, 32)
    np.testing.assert_allclose(got.batch[0], expected, rtol=0, atol=1e-6)
    assert win.stale == 2  # frames 0 and 1 never reached a clip


def _chunks(seconds: float, rate: int, chunk_s: float = 0.1) -> list[np.ndarray]:
    t = np.arange(int(seconds * rate)) / rate
    signal = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * RNG.standard_normal(t.size)).astype(np.float32)
    n = int(chunk_s * rate)
    return [signal[i : i + n] for i in range(0, signal.size, n)]


def test_audio_window_equals_the_stream_preprocessor():
    chunks = _chunks(2.5, 48000)
    win = AudioWindow(audio.AudioConfig())
    ref = audio.AudioStreamPreprocessor(audio.AudioConfig(), input_rate=48000)
    taken = []
    for i, c in enumerate(chunks):  # a lane takes whenever the window is ready, as the scheduler does
        win.push(sample("audio", c, i, 0.1 * i, rate=48000), 0.1 * i)
        ref.push(c)
        got = win.take()
        if got is not None:
            taken.append(i)
            assert got.batch.shape == (1, 1, 128, 204)
            np.testing.assert_array_equal(got.batch[0], ref.window())
            assert got.t_data == pytest.approx(0.1 * (i + 1))  # end of the newest chunk
    assert taken == [20, 21, 22, 23, 24]  # ready once 2 s + the resampler's delay margin are in
    assert win.stale == 0


def test_audio_window_backlog_is_bounded_and_keeps_the_newest_clip():
    chunks = _chunks(10.0, 16000)
    win = AudioWindow(audio.AudioConfig())
    for i, c in enumerate(chunks):
        win.push(sample("audio", c, i, 0.1 * i, rate=16000), 0.1 * i)
    assert win.stale == 80  # 8 s of chunks were dropped unprocessed: only the newest clip is kept
    assert win.buffered_bytes <= 2 * 4 * 16000 * 2.1  # the raw clip plus the melspec ring
    ref = audio.AudioStreamPreprocessor(audio.AudioConfig(), input_rate=16000)
    for c in chunks:
        ref.push(c)
    np.testing.assert_array_equal(win.take().batch[0], ref.window())


def _imu_rows(seconds: float, rate: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(seconds * rate)) / rate + 100.0
    rows = np.stack([np.sin(t), np.cos(t), 9.8 + 0 * t, 0.1 * t, 0 * t, np.sin(3 * t)], axis=1)
    return t, rows


def test_imu_window_is_bounded_and_resamples_the_newest_window():
    cfg = imu.ImuConfig(target_rate=50.0, window_length=50)  # a 1-s model window
    win = ImuWindow(cfg, WindowConfig(imu_max_rate_hz=200.0))
    t, rows = _imu_rows(10.0, 100.0)
    for i in range(0, len(t), 10):
        win.push(sample("imu", rows[i : i + 10], i // 10, t[i], t=t[i : i + 10]), t[i])
        assert win.buffered_bytes == win.capacity * 7 * 8
    assert win.capacity <= 1.25 * 1.0 * 200 + 1
    got = win.take()
    np.testing.assert_allclose(got.batch[0], imu.preprocess_timestamped(t, rows, cfg), rtol=0, atol=1e-6)
    assert got.batch.shape == (1, 6, 50) and got.t_data == pytest.approx(t[-1])


def test_imu_window_needs_its_fill_and_drops_rows_that_go_back_in_time():
    win = ImuWindow(imu.ImuConfig(target_rate=50.0, window_length=50), WindowConfig(imu_min_fill=1.0))
    t, rows = _imu_rows(0.5, 100.0)
    win.push(sample("imu", rows, 0, t[0], t=t), t[0])
    assert not win.ready  # 0.5 s of a 1-s window
    win.push(sample("imu", rows[:5], 1, t[0], t=t[:5]), t[0])  # a replayed, older block
    assert win.rejected_rows == 5
    t2, rows2 = t + 0.5, rows
    win.push(sample("imu", rows2, 2, t2[0], t=t2), t2[0])
    assert win.ready and win.take() is not None


def test_depth_window_takes_geometry_from_meta_or_config():
    cfg = depth.DepthConfig(size=32, crop_size=32)
    d = np.linspace(0.5, 4.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    win = FrameWindow(Modality.DEPTH, cfg)
    assert not win.push(sample("depth", d, 0, 0.0), 0.0) and win.rejected == 1
    assert win.push(sample("depth", d, 1, 0.1, fx=40.0, baseline=0.05), 0.1)
    np.testing.assert_array_equal(win.take().batch[0], depth.preprocess(d, 40.0, 0.05, cfg))
    win2 = FrameWindow(Modality.DEPTH, cfg, WindowConfig(depth_fx=30.0, depth_baseline=0.1))
    assert win2.push(sample("depth", d, 0, 0.0), 0.0)
    np.testing.assert_array_equal(win2.take().batch[0], depth.preprocess(d, 30.0, 0.1, cfg))


def test_make_window_rebuilds_the_manifest_config():
    fixed = thermal.ThermalConfig(mode="fixed", fixed_low=27315.0, fixed_high=31315.0, size=32, crop_size=32)
    record = {"config_class": "ThermalConfig", "config": fixed.to_dict()}
    win = make_window("thermal", ("batch", 1, 32, 32), record)
    assert win.config == fixed
    frame = RNG.integers(29000, 30000, (30, 40)).astype(np.uint16)
    win.push(sample("thermal", frame, 0, 0.0), 0.0)
    np.testing.assert_array_equal(win.take().batch[0], thermal.preprocess(frame, fixed))
    assert make_window("thermal", ("batch", 1, 224, 224), {}).config == thermal.ThermalConfig()
    with pytest.raises(ConfigError, match="config_class"):
        make_window("thermal", ("batch", 1, 224, 224), {"config_class": "AudioConfig", "config": {}})
    with pytest.raises(ConfigError, match="text"):
        make_window("text", ("batch", 77), {})


def test_fuse_weights_and_staleness():
    e1, e2 = np.eye(4, dtype=np.float32)[0] * 3.0, np.eye(4, dtype=np.float32)[1]
    out = fuse({"vision": e1, "audio": e2}, {"vision": 0.1, "audio": 0.2},
               FusionConfig(weights={"audio": 3.0}, staleness_s=0.5))
    expected = np.array([1.0, 3.0, 0.0, 0.0]) / np.sqrt(10.0)
    np.testing.assert_allclose(out.embedding, expected, rtol=1e-6)
    assert out.modalities == ("audio", "vision")
    stale = fuse({"vision": e1, "audio": e2}, {"vision": 0.1, "audio": 0.9}, FusionConfig(staleness_s=0.5))
    np.testing.assert_allclose(stale.embedding, [1, 0, 0, 0], rtol=1e-6)
    assert stale.modalities == ("vision",)
    assert fuse({"vision": e1}, {"vision": 2.0}, FusionConfig(staleness_s=0.5)).embedding is None
    with pytest.raises(ConfigError, match="weights.audio"):
        FusionConfig(weights={"audio": -1.0})


def _bank() -> LabelBank:
    return LabelBank(labels=("a", "b", "c"), embeddings=np.eye(3, 4, dtype=np.float32), logit_scale=10.0)


def test_recognizer_matches_the_label_bank():
    bank = _bank()
    rec = Recognizer(bank, k=2)
    emb = np.array([0.2, 0.9, 0.1, 0.3], dtype=np.float32)
    assert rec.top_k(emb) == [(label, pytest.approx(s), pytest.approx(p)) for label, s, p in bank.top_k(emb, k=2)[0]]
    assert rec.top_k(emb)[0][0] == "b"


def test_hysteresis_enter_exit_and_min_duration():
    tracker = HysteresisTracker("vision", ("a", "b"), HysteresisConfig(enter=0.6, exit=0.3, min_duration_s=0.5))
    probs = {0.0: 0.7, 0.2: 0.7, 0.4: 0.2, 0.6: 0.7, 0.8: 0.7, 1.1: 0.7, 1.3: 0.5, 1.5: 0.35, 1.7: 0.2, 1.9: 0.1,
             2.3: 0.1}
    events = []
    for t, p in probs.items():
        scores = np.array([p, 1.0 - p])
        events += [(e.kind, e.label, e.t) for e in tracker.update(t, scores, scores) if e.label == "a"]
    # 0.0-0.2 is too short (dip at 0.4); enters at 1.1 (held since 0.6); 1.3-1.5 stay inside the band;
    # exits at 2.3 (below 0.3 since 1.7).
    assert events == [("enter", "a", 1.1), ("exit", "a", 2.3)]
    with pytest.raises(ConfigError, match="exit"):
        HysteresisConfig(enter=0.3, exit=0.5)


def test_latency_reservoir_is_bounded_and_reports_percentiles():
    stats = LatencyStats(capacity=256, seed=1)
    values = np.random.default_rng(2).uniform(0.0, 0.1, 20000)
    for v in values:
        stats.add(v)
    assert len(stats) == 256 and stats.count == 20000
    summary = stats.summary()
    assert summary["p50_ms"] == pytest.approx(50.0, abs=8.0)
    assert summary["p99_ms"] == pytest.approx(99.0, abs=3.0)
    assert summary["max_ms"] == pytest.approx(values.max() * 1e3)
    metrics = RuntimeMetrics(["vision", "audio"])
    metrics["vision"].latency.add(0.012)
    table = format_latency_table(metrics.snapshot())
    assert "vision" in table and "12.0" in table and "audio" in table


class _SumEngine:
    def run(self, batch):
        return np.full((1, 4), float(batch.sum()), np.float32)


def test_lane_keeps_its_cadence_on_the_data_clock():
    lane = Lane("vision", FrameWindow(Modality.VISION, image.ImageConfig(size=32, crop_size=32)), _SumEngine(), 5.0,
                latency_from="arrival")
    imgs = frames(60)
    runs = [u.seq for i, f in enumerate(imgs) if (u := lane.offer(sample("vision", f, i, i / 10), i / 10))]
    assert runs == list(range(0, 60, 2))  # 10 fps at 5 Hz: every second frame, no drift from 0.2 + 0.2 + ...
    assert (lane.window.decimated, lane.window.stale) == (29, 0) and lane.window.has_new  # frame 59 still held
    assert lane.metrics.windows == 30 and lane.metrics.latency.count == 30


def test_live_lane_embeds_the_data_that_arrives_after_its_slot():
    """A frame that arrived before the lane's slot is replaced by the next one when it comes within the wait limit;
    when nothing comes (a stream that ended), the held frame is embedded after at most the limit."""
    import time

    from edgebind.runtime.scheduler import LaneWorker

    lane = Lane("vision", FrameWindow(Modality.VISION, image.ImageConfig(size=32, crop_size=32)), _SumEngine(), 2.0)
    done = []
    worker = LaneWorker(lane, done.append, poll_s=0.01)
    worker.start()
    imgs = frames(4)
    t0 = time.monotonic()

    def push(i):
        lane.push(sample("vision", imgs[i], i, time.monotonic()), time.monotonic())
        worker.notify()

    try:
        push(0)  # runs at once; the next slot is 0.5 s later
        while len(done) < 1 and time.monotonic() - t0 < 2:
            time.sleep(0.005)
        time.sleep(0.3 - (time.monotonic() - t0))
        push(1)  # before the slot
        time.sleep(0.6 - (time.monotonic() - t0))
        push(2)  # after the slot: fresher, and embedded instead of frame 1
        while len(done) < 2 and time.monotonic() - t0 < 3:
            time.sleep(0.005)
        assert [u.seq for u in done] == [0, 2]
        assert done[1].latency_s < 0.2
        push(3)  # before the next slot, and nothing follows
        while len(done) < 3 and time.monotonic() - t0 < 5:
            time.sleep(0.005)
        assert [u.seq for u in done] == [0, 2, 3]
        assert done[2].latency_s < lane.period_s + 1.5 * 0.3 + 0.3  # the slot wait + at most the limit (+ slack)
    finally:
        worker.request_stop()
        worker.join(2.0)
