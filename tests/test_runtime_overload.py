"""Overload: slow engines and slow consumers. Newest data wins, stale data is counted, memory stays bounded."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from edgebind.runtime.pipeline import Runtime, RuntimeConfig
from edgebind.runtime.sources.synthetic import SyntheticConfig, SyntheticSource


def camera(rate_hz: float = 100.0) -> SyntheticSource:
    return SyntheticSource(SyntheticConfig(modality="vision", rate_hz=rate_hz, height=120, width=160), name="cam")


def test_slow_engine_newest_frame_wins_and_stale_frames_are_counted(fake_runtime_bundle, fake_engines):
    engines = fake_engines(vision=0.1)  # 10 embeddings/s at most, the camera gives 100 frames/s
    config = RuntimeConfig(mode="live", rates_hz={"vision": 50.0})
    rt = Runtime(fake_runtime_bundle, [camera()], None, config, engines=engines)
    tracemalloc.start()
    try:
        with rt:
            seqs, mem = [], []
            deadline = time.monotonic() + 2.0
            for r in rt.results():
                seqs.append(r.seqs["vision"])
                mem.append(tracemalloc.get_traced_memory()[0])
                if time.monotonic() > deadline:
                    break
            window = rt._lanes["vision"].window
            held = window.buffered_bytes
    finally:
        tracemalloc.stop()
    gaps = np.diff(seqs)
    # A FIFO would embed frames 0, 1, 2, ...; newest-wins jumps over the ~10 frames that arrive per run.
    assert len(seqs) >= 8 and np.median(gaps) >= 5, seqs
    assert held == 120 * 160 * 3  # one frame held, however many arrived
    m = rt.summary()["metrics"]["modalities"]["vision"]
    assert m["stale"] >= 5 * m["windows"] and m["dropped"] == m["stale"]
    # Every accepted frame is accounted for: embedded, stale, decimated, or the one still held.
    assert window.pushed == m["windows"] + m["stale"] + m["decimated"] + int(window.has_new)
    # Bounded memory: the second half of the run allocates no more than the first (no queue grows).
    half = len(mem) // 2
    assert max(mem[half:]) < max(mem[:half]) + 2_000_000, (max(mem[:half]), max(mem[half:]))


def test_slow_audio_engine_skips_hops_instead_of_queueing(fake_runtime_bundle, fake_engines):
    engines = fake_engines(audio=0.5)
    mic = SyntheticSource(SyntheticConfig(modality="audio", rate_hz=20.0, audio_rate=16000), name="mic")
    config = RuntimeConfig(mode="live", audio_hop_s=0.1)
    with Runtime(fake_runtime_bundle, [mic], None, config, engines=engines) as rt:
        window = rt._lanes["audio"].window
        peak = 0
        deadline = time.monotonic() + 3.2  # the first window is ready after 2 s; stop after the next result
        for _ in rt.results():
            peak = max(peak, window.buffered_bytes)
            if time.monotonic() > deadline:
                break
    m = rt.summary()["metrics"]["modalities"]["audio"]
    assert m["windows"] >= 2
    assert m["skipped_hops"] >= 3 * (m["windows"] - 1)  # ~5 hops pass during each 0.5-s run
    assert m["dropped"] == m["skipped_hops"] + m["stale"]
    assert peak <= 2 * 4 * 16000 * 2.1  # at most one clip of raw chunks plus the melspec ring


def test_slow_consumer_loses_the_oldest_results_not_memory(fake_runtime_bundle, fake_engines):
    config = RuntimeConfig(mode="live", rates_hz={"vision": 50.0}, result_queue=3)
    with Runtime(fake_runtime_bundle, [camera(50.0)], None, config, engines=fake_engines()) as rt:
        time.sleep(1.0)  # nobody reads: results pile up only to the queue size
        assert len(rt._queue) <= 3
        first = next(iter(rt.results()))
    snap = rt.summary()["metrics"]
    assert snap["results_dropped"] >= 10
    assert first.index >= snap["results_dropped"]  # what is left is the newest, not the oldest
