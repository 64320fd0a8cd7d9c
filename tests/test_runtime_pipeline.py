"""The Runtime with injected fake engines and synthetic sources: results, fusion, labels, events, faults, stop."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from edgebind.errors import ConfigError, ManifestError
from edgebind.labels import LabelBank
from edgebind.runtime.fusion import FusionConfig
from edgebind.runtime.pipeline import Runtime, RuntimeConfig
from edgebind.runtime.recognition import HysteresisConfig
from edgebind.runtime.recording import RecordingWriter, load_index
from edgebind.runtime.sources.base import RetryPolicy, StreamSource
from edgebind.runtime.sources.synthetic import SyntheticConfig, SyntheticSource
from edgebind.runtime.windows import WindowConfig

MODALITIES = ("vision", "audio", "depth", "thermal", "imu")


def bank() -> LabelBank:
    emb = np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)
    return LabelBank(labels=("dog", "car", "speech", "walking"), embeddings=emb, logit_scale=10.0)


def synthetic(modality: str, *, count: int | None, realtime: bool = True, **kw) -> SyntheticSource:
    rates = {"vision": 30.0, "audio": 10.0, "depth": 10.0, "thermal": 10.0, "imu": 20.0}
    return SyntheticSource(SyntheticConfig(modality=modality, rate_hz=rates[modality], count=count,
                                           realtime=realtime, **kw), name=f"syn_{modality}")


class BrokenDevice(StreamSource):
    """A camera whose device never opens (unplugged)."""

    def __init__(self) -> None:
        super().__init__("broken_cam", "thermal", retry=RetryPolicy(initial_s=0.05, max_s=0.05, max_attempts=3))

    def _open(self) -> None:
        raise OSError("no such device /dev/video9")

    def _read(self) -> None:  # pragma: no cover - never opened
        raise AssertionError

    def _close(self) -> None:
        pass


def test_live_runtime_embeds_every_modality_with_labels_events_and_latency(fake_runtime_bundle, fake_engines):
    sources = [synthetic(m, count={"vision": 45, "audio": 25, "depth": 15, "thermal": 15, "imu": 30}[m])
               for m in MODALITIES]
    config = RuntimeConfig(mode="live", hysteresis=HysteresisConfig(enter=0.25, exit=0.1),
                           fusion=FusionConfig(staleness_s=2.0))
    engines = fake_engines()
    with Runtime(fake_runtime_bundle, sources, bank(), config, engines=engines) as rt:
        results = list(rt.results())
    assert rt.mode == "live"
    seen = {m for r in results for m in r.embeddings}
    assert seen == set(MODALITIES)
    assert {r.trigger for r in results} == set(MODALITIES)
    last = results[-1]
    assert set(last.top_k) >= {"fused", *last.embeddings} and len(last.top_k["fused"]) == 4
    assert last.fused is not None and np.linalg.norm(last.fused) == pytest.approx(1.0, abs=1e-5)
    assert set(last.fused_modalities) <= set(last.embeddings)
    for r in results:
        assert set(r.latency_ms) == set(r.embeddings) and all(v >= 0 for v in r.latency_ms.values())
        assert all(a >= 0 for a in r.ages.values())
    entered = {(e.stream, e.kind) for r in results for e in r.events}
    assert ("fused", "enter") in entered and ("vision", "enter") in entered
    line = json.loads(last.to_json(embeddings="head"))
    assert line["trigger"] == last.trigger and len(line["embeddings"]["vision"]) == 8 and len(line["fused"]) == 8
    assert set(line["top_k"]["fused"][0]) == {"label", "score", "prob"}
    assert "embeddings" not in json.loads(last.to_json())
    summary = rt.summary()
    for m in MODALITIES:
        mm = summary["metrics"]["modalities"][m]
        assert mm["windows"] >= 1 and mm["latency"]["p50_ms"] is not None and mm["latency"]["count"] == mm["windows"]
    assert summary["metrics"]["results"] == len(results)
    assert all(h["state"] == "finished" for h in summary["health"].values())
    assert not any(e.closed for e in engines.values())  # given engines stay the caller's
    assert "vision" in rt.latency_table()


def test_a_failing_source_is_unhealthy_while_the_others_keep_running(fake_runtime_bundle, fake_engines):
    engines = fake_engines()
    calls = {"n": 0}
    real_run = engines["depth"].run

    def flaky(batch):  # every other depth inference fails
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("simulated engine fault")
        return real_run(batch)

    engines["depth"].run = flaky
    sources = [synthetic("vision", count=None, nan_every=4), synthetic("depth", count=None), BrokenDevice()]
    health_seen = []
    with Runtime(fake_runtime_bundle, sources, bank(), RuntimeConfig(mode="live"), engines=engines) as rt:
        vision_after_failure = 0
        deadline = time.monotonic() + 10.0
        for r in rt.results():
            health_seen.append(r.health["broken_cam"])
            if r.health["broken_cam"] == "failed" and r.trigger == "vision":
                vision_after_failure += 1
            if vision_after_failure >= 3 or time.monotonic() > deadline:
                break
    assert vision_after_failure >= 3  # vision kept producing after the thermal source gave up
    assert "thermal" not in r.embeddings
    summary = rt.summary()
    broken = summary["health"]["broken_cam"]
    assert broken["state"] == "failed" and "no such device" in broken["last_error"] and broken["errors"] == 3
    assert summary["health"]["syn_vision"]["rejected"] >= 1  # NaN frames never reach the runtime
    depth = summary["metrics"]["modalities"]["depth"]
    assert depth["engine_errors"] >= 1 and depth["windows"] >= 1 and "simulated" in depth["last_error"]


def test_callback_form_stops_sources_and_flushes_the_recording(fake_runtime_bundle, fake_engines, tmp_path):
    sources = [synthetic(m, count=None) for m in ("vision", "audio", "imu")]
    writer = RecordingWriter(tmp_path / "rec")
    rt = Runtime(fake_runtime_bundle, sources, None, RuntimeConfig(mode="live", stop_timeout_s=1.0),
                 engines=fake_engines(), recorder=writer)
    got = []
    summary = rt.run(got.append, duration=2.5)
    assert got and all(r.top_k == {} for r in got)  # no label bank: no labels, still embeddings
    assert {m for r in got for m in r.embeddings} == {"vision", "audio", "imu"}
    assert all(s.health().state == "stopped" for s in sources)
    assert not any(t.name.startswith(("edgebind-lane", "edgebind-src")) for t in threading.enumerate())
    index = load_index(tmp_path / "rec")  # written on stop: the recording is complete
    assert set(index["streams"]) == {"syn_vision", "syn_audio", "syn_imu"}
    assert index["streams"]["syn_vision"]["count"] >= 30
    assert summary["metrics"]["results"] == len(got) + summary["metrics"]["results_dropped"]


def test_stop_returns_within_its_budget_while_an_engine_is_slow(fake_runtime_bundle, fake_engines):
    engines = fake_engines(vision=0.3)
    rt = Runtime(fake_runtime_bundle, [synthetic("vision", count=None)], None,
                 RuntimeConfig(mode="live", stop_timeout_s=1.0), engines=engines)
    with rt:
        next(iter(rt.results()))
        start = time.monotonic()
    elapsed = time.monotonic() - start
    # A hang guard, not a benchmark: stop() waits at most stop_timeout_s for threads, then returns.
    assert elapsed < 1.0 + 0.5, f"stop took {elapsed:.2f} s"


def test_deterministic_mode_hands_over_every_result(fake_runtime_bundle, fake_engines):
    sources = [synthetic(m, count=20, realtime=False) for m in ("vision", "thermal")]
    rt = Runtime(fake_runtime_bundle, sources, bank(),
                 RuntimeConfig(mode="deterministic", result_queue=2), engines=fake_engines())
    got = []
    with rt:
        for r in rt.results():
            time.sleep(0.005)  # a slow consumer: the sources wait, nothing is dropped
            got.append(r)
    snap = rt.summary()["metrics"]
    assert snap["results_dropped"] == 0
    assert len(got) == sum(m["windows"] for m in snap["modalities"].values())
    assert all(m["stale"] == 0 for m in snap["modalities"].values())
    assert all(b.t >= a.t for a, b in zip(got, got[1:]))


def test_configuration_errors_name_the_problem(fake_runtime_bundle, fake_engines):
    with pytest.raises(ConfigError, match="rates_hz.vision"):
        RuntimeConfig(rates_hz={"vision": 0.0})
    with pytest.raises(ConfigError, match="one source per modality"):
        Runtime(fake_runtime_bundle, [synthetic("vision", count=1), SyntheticSource(
            SyntheticConfig(modality="vision"), name="second")], engines=fake_engines())
    wide = LabelBank(labels=("a",), embeddings=np.ones((1, 8), np.float32), logit_scale=1.0)
    with pytest.raises(ManifestError, match="width 8"):
        Runtime(fake_runtime_bundle, [synthetic("vision", count=1)], wide, engines=fake_engines())
    assert RuntimeConfig(audio_hop_s=0.25).rate("audio") == 4.0
    config = RuntimeConfig(window=WindowConfig(depth_fx=500.0), hysteresis=HysteresisConfig(enter=0.4, exit=0.2))
    assert RuntimeConfig.from_dict(config.to_dict()) == config
