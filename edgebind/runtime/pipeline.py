"""The runtime: sources -> windows -> engines -> fusion -> zero-shot recognition -> results.

::

    with Runtime("export/imagebind_tiny", sources, labels="labels.json") as rt:
        for result in rt.results():          # one Result per new embedding of any modality
            print(result.top_k["fused"][:1], result.latency_ms)

    Runtime(bundle, sources, labels=bank).run(callback, duration=10.0)   # callback form

Each sensor modality gets a window (:mod:`.windows`, preprocessing parameters from the bundle
manifest), a lane with its own target rate (:mod:`.scheduler`) and an engine (``open_engine``). Every
new embedding produces a :class:`Result` with the latest embedding of every modality and its age, the
fused embedding of the fresh ones (:mod:`.fusion`), top-k labels per modality and fused, hysteresis
events (:mod:`.recognition`), latencies and source health.

Modes (``RuntimeConfig.mode``):

- ``live``: lanes run on worker threads on the monotonic clock; under overload the newest data wins
  and stale data is counted, never queued. Latency = capture time of the newest data in the window
  (``Sample.t_capture``, for chunks the end of the chunk, clamped to its arrival) -> embedding ready;
  it includes the wait for the lane's next slot. Sources must stamp ``t_capture`` with
  ``time.monotonic()`` (live devices, real-time replay). A slow results consumer loses the oldest
  results (``results_dropped``).
- ``deterministic``: each sample is processed inline in the sink with its ``t_capture`` as the clock,
  and results are handed over with backpressure (none dropped). With replay sources as fast as
  possible (``open_replay(path, realtime=False)``: one shared clock calls sinks one at a time in
  recorded-time order) the same recording gives identical results on every run: ``t``, embeddings,
  ages, fused, top-k and events (``latency_ms`` and ``health`` are measurements of the run and vary).
  Latency there = arrival of the newest data at the runtime -> embedding ready.
- ``auto`` (default): deterministic when every source replays on a non-realtime clock, else live.

Faults: a sample the window cannot use is counted (``rejected``), a preprocessing or engine error is
counted and logged, a source that fails shows in ``Result.health`` and its modality ages out of the
fused embedding (``staleness_s``) and out of the results (``expire_s``); the other lanes keep running.
``stop()`` (also on Ctrl-C / leaving the ``with``) stops every source and worker within
``stop_timeout_s`` and then closes an attached recording writer, which flushes it completely.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Optional, Sequence

import numpy as np

from .._config import ConfigMixin
from ..bundle.manifest import load_manifest
from ..errors import ConfigError
from ..modality import Modality
from .fusion import FusionConfig, fuse
from .metrics import RuntimeMetrics, format_latency_table
from .recognition import Event, HysteresisConfig, HysteresisTracker, Recognizer, check_bank_width
from .scheduler import EmbeddingUpdate, Lane, LaneWorker, ResultQueue
from .windows import WindowConfig, make_window

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RATES_HZ", "Result", "RunOptions", "Runtime", "RuntimeConfig", "run_runtime"]

DEFAULT_RATES_HZ: dict[str, float] = {"vision": 5.0, "depth": 5.0, "thermal": 5.0, "audio": 2.0, "imu": 2.0}
"""Target inference rates; audio's 2 Hz is a 0.5 s hop over its 2 s window."""


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(ConfigMixin):
    mode: Literal["auto", "live", "deterministic"] = "auto"
    rates_hz: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per-modality target rates; missing ones use ``DEFAULT_RATES_HZ``."""
    audio_hop_s: Optional[float] = None
    """Audio hop (seconds between 2-s windows); overrides ``rates_hz["audio"]`` when set."""
    fusion: FusionConfig = dataclasses.field(default_factory=FusionConfig)
    top_k: int = 5
    hysteresis: Optional[HysteresisConfig] = None
    """None: no events."""
    window: WindowConfig = dataclasses.field(default_factory=WindowConfig)
    expire_s: Optional[float] = 5.0
    """Embeddings older than this leave the results (None: keep them, with their growing age)."""
    result_queue: int = 64
    backend: str = "auto"
    precision: str = "auto"
    threads: Optional[int] = None
    engines_root: Optional[str] = "engines"
    warmup: int = 1
    stop_timeout_s: float = 1.0
    latency_reservoir: int = 1024

    def __post_init__(self) -> None:
        rates = {}
        for key, value in dict(self.rates_hz).items():
            name = Modality.parse(key).value
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            if not (ok and value > 0):
                raise ConfigError(f"RuntimeConfig.rates_hz.{name}: expected a positive rate in Hz, got {value!r}")
            rates[name] = float(value)
        object.__setattr__(self, "rates_hz", rates)
        for name in ("audio_hop_s", "expire_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"RuntimeConfig.{name}: expected a positive number of seconds or null, got {value!r}")
        if self.top_k < 1 or self.result_queue < 1 or self.warmup < 0 or not self.stop_timeout_s > 0:
            raise ConfigError(
                "RuntimeConfig: expected top_k >= 1, result_queue >= 1, warmup >= 0, stop_timeout_s > 0; got "
                f"{self.top_k}, {self.result_queue}, {self.warmup}, {self.stop_timeout_s}"
            )

    def rate(self, modality: str) -> float:
        if modality == "audio" and self.audio_hop_s is not None:
            return 1.0 / self.audio_hop_s
        return self.rates_hz.get(modality, DEFAULT_RATES_HZ.get(modality, 5.0))


@dataclasses.dataclass(frozen=True)
class Result:
    """The runtime's view after one new embedding (see the module docstring for the time base)."""

    t: float
    """Result time: the data time of the new embedding (deterministic) or ``time.monotonic()`` (live)."""
    index: int
    trigger: str
    """The modality whose new embedding produced this result."""
    embeddings: dict[str, np.ndarray]
    ages: dict[str, float]
    """Seconds from each embedding's newest data to ``t``."""
    fused: Optional[np.ndarray]
    fused_modalities: tuple[str, ...]
    top_k: dict[str, list[tuple[str, float, float]]]
    """Per modality and "fused": (label, cosine, probability), best first (empty without a label bank)."""
    events: tuple[Event, ...]
    latency_ms: dict[str, float]
    """Capture -> embedding of each modality's current embedding."""
    health: dict[str, str]
    """Source name -> state ("ok", "retrying", "failed", "finished", ...)."""
    seqs: dict[str, int] = dataclasses.field(default_factory=dict)
    """``Sample.seq`` of the newest sample in each modality's embedded window (to trace frames)."""

    def to_dict(self, *, embeddings: Literal["none", "head", "full"] = "none", head: int = 8) -> dict[str, Any]:
        """JSON-ready dict; ``embeddings`` adds the vectors (``head``: their first ``head`` values)."""
        out: dict[str, Any] = {
            "t": round(self.t, 6), "index": self.index, "trigger": self.trigger,
            "ages": {m: round(a, 6) for m, a in self.ages.items()},
            "fused_modalities": list(self.fused_modalities),
            "top_k": {k: [{"label": lbl, "score": round(s, 6), "prob": round(p, 6)} for lbl, s, p in v]
                      for k, v in self.top_k.items()},
            "events": [e.to_dict() for e in self.events],
            "latency_ms": {m: round(v, 3) for m, v in self.latency_ms.items()},
            "health": dict(self.health),
            "seqs": dict(self.seqs),
        }
        if embeddings != "none":
            cut = None if embeddings == "full" else head
            out["embeddings"] = {m: [round(float(x), 6) for x in e[:cut]] for m, e in self.embeddings.items()}
            out["fused"] = None if self.fused is None else [round(float(x), 6) for x in self.fused[:cut]]
        return out

    def to_json(self, *, embeddings: Literal["none", "head", "full"] = "none", head: int = 8) -> str:
        """One line of JSON (see ``to_dict``)."""
        return json.dumps(self.to_dict(embeddings=embeddings, head=head), separators=(",", ":"), allow_nan=False)


def _is_fast_replay(source: Any) -> bool:
    clock = getattr(source, "clock", None)
    return clock is not None and getattr(clock, "realtime", True) is False


def _open_engine(bundle_dir: Path, modality: str, config: RuntimeConfig) -> Any:
    from ..engines.select import open_engine

    return open_engine(bundle_dir, modality, backend=config.backend, precision=config.precision,
                       threads=config.threads, engines_root=config.engines_root)


class Runtime:
    """Sources + bundle + label bank -> a stream of :class:`Result` (see the module docstring).

    ``engines`` (modality -> engine with ``run``/``input_spec``) replaces opening them from the
    bundle; the caller then owns and closes them. ``recorder`` (e.g.
    :class:`edgebind.runtime.recording.RecordingWriter`) receives every sample and is closed on stop.
    One source per modality.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        sources: Sequence[Any],
        labels: Any = None,
        config: RuntimeConfig | None = None,
        *,
        engines: Mapping[str, Any] | None = None,
        engine_factory: Callable[[Path, str, RuntimeConfig], Any] | None = None,
        recorder: Any = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.config = config or RuntimeConfig()
        self.manifest = load_manifest(self.bundle_dir)
        self.sources = list(sources)
        if not self.sources:
            raise ConfigError("Runtime: no sources given")
        by_modality: dict[str, str] = {}
        for src in self.sources:
            m = Modality.parse(src.modality).value
            if m == "text":
                raise ConfigError(f"source {src.name!r}: text is not a sensor stream")
            if m in by_modality:
                raise ConfigError(f"sources {by_modality[m]!r} and {src.name!r} are both {m}; the runtime takes one "
                                  "source per modality (run a second Runtime for a second camera)")
            by_modality[m] = src.name
        self.modalities = tuple(by_modality)
        for m in self.modalities:
            self.manifest.tower(m)  # ManifestError naming the bundle's towers
        self.bank = self._load_bank(labels)
        self.recognizer = None if self.bank is None else Recognizer(self.bank, self.config.top_k)
        if self.config.mode == "auto":
            self.mode = "deterministic" if all(_is_fast_replay(s) for s in self.sources) else "live"
        else:
            self.mode = self.config.mode
        self.metrics = RuntimeMetrics(self.modalities, self.config.latency_reservoir)
        self._given_engines = dict(engines or {})
        self._engine_factory = engine_factory or _open_engine
        self._owned: dict[str, Any] = {}
        self.recorder = recorder
        self._lanes: dict[str, Lane] = {}
        self._workers: dict[str, LaneWorker] = {}
        self._queue = ResultQueue(self.config.result_queue, self.mode == "deterministic", self.metrics)
        self._state_lock = threading.Lock()
        self._inline_lock = threading.Lock()
        self._latest: dict[str, EmbeddingUpdate] = {}
        self._top_k: dict[str, list[tuple[str, float, float]]] = {}
        self._trackers: dict[str, HysteresisTracker] = {}
        self._results = 0
        self._clock = -math.inf
        self._started = self._stopped = False
        self.recorder_errors = 0
        self.unrouted = 0

    # -- setup -------------------------------------------------------------------------------------
    def _load_bank(self, labels: Any) -> Any:
        if labels is None:
            return None
        if isinstance(labels, (str, os.PathLike)):
            from ..labels import LabelBank

            labels = LabelBank.load(labels)
        if hasattr(labels, "check_matches"):
            labels.check_matches(self.manifest)
        check_bank_width(labels, {m: int(self.manifest.tower(m).output.shape[-1]) for m in self.modalities})
        return labels

    def _engine(self, modality: str) -> Any:
        if modality in self._given_engines:
            return self._given_engines[modality]
        engine = self._engine_factory(self.bundle_dir, modality, self.config)
        self._owned[modality] = engine
        logger.info("%s engine: %s", modality, getattr(engine, "reason", repr(engine)))
        return engine

    def start(self) -> "Runtime":
        """Open engines, build lanes and start the sources (idempotent)."""
        if self._started:
            return self
        self._started = True
        try:
            for m in self.modalities:
                tower = self.manifest.tower(m)
                engine = self._engine(m)
                if self.config.warmup and hasattr(engine, "warmup"):
                    engine.warmup(self.config.warmup)
                window = make_window(m, tuple(tower.input.shape), tower.preprocess, self.config.window)
                latency_from = "arrival" if self.mode == "deterministic" else "capture"
                self._lanes[m] = Lane(m, window, engine, self.config.rate(m), self.metrics[m],
                                      latency_from=latency_from)
                if self.mode == "live":
                    self._workers[m] = LaneWorker(self._lanes[m], self._on_update)
            for worker in self._workers.values():
                worker.start()
            logger.info("runtime: %s mode, lanes %s", self.mode,
                        ", ".join(f"{m} @ {self.config.rate(m):g} Hz" for m in self.modalities))
            for src in self.sources:
                src.start(self._sink)
        except BaseException:
            self.stop()
            raise
        return self

    # -- data path ---------------------------------------------------------------------------------
    def _sink(self, sample: Any) -> None:
        """Called by source threads; never raises (a bad sample is counted)."""
        if self._stopped:
            return
        if self.recorder is not None:
            try:
                self.recorder.write(sample)
            except Exception:  # noqa: BLE001 - recording trouble must not stop recognition
                self.recorder_errors += 1
                logger.exception("recorder failed on a %s sample", sample.source)
        modality = Modality.parse(sample.modality).value
        lane = self._lanes.get(modality)
        if lane is None:
            self.unrouted += 1
            return
        t = float(sample.t_capture)
        if self.mode == "deterministic":
            with self._inline_lock:
                update = lane.offer(sample, t)
                if update is not None:
                    self._on_update(update)
        elif lane.push(sample, t):
            self._workers[modality].notify()

    def _on_update(self, update: EmbeddingUpdate) -> None:
        with self._state_lock:  # one result at a time, handed over in index order
            result = self._build_result(update)
            self.metrics.results += 1
            self._queue.put(result)

    def _build_result(self, update: EmbeddingUpdate) -> Result:
        m = update.modality
        # Deterministic: the data clock never runs backwards (a chunk's newest row can lie after the next
        # sample's stamp, which is its first row), so ages are >= 0 and result times increase.
        now = max(self._clock, update.t_data) if self.mode == "deterministic" else time.monotonic()
        self._clock = now
        self._latest[m] = update
        events: list[Event] = []
        ages = {k: now - u.t_data for k, u in self._latest.items()}
        expire = self.config.expire_s
        for k in [k for k, a in ages.items() if expire is not None and a > expire]:
            del self._latest[k], ages[k]
            self._top_k.pop(k, None)
            if k in self._trackers:
                events += self._trackers[k].expire(now)
        embeddings = {k: u.embedding for k, u in sorted(self._latest.items())}
        fused = fuse(embeddings, ages, self.config.fusion)
        if self.recognizer is not None:
            events += self._recognise(m, update.embedding, now)
            if fused.embedding is not None:
                events += self._recognise("fused", fused.embedding, now)
            else:
                self._top_k.pop("fused", None)
                if "fused" in self._trackers:
                    events += self._trackers["fused"].expire(now)
        self._results += 1
        return Result(
            t=now, index=self._results - 1, trigger=m, embeddings=embeddings,
            ages={k: ages[k] for k in embeddings}, fused=fused.embedding, fused_modalities=fused.modalities,
            top_k={k: list(v) for k, v in sorted(self._top_k.items())}, events=tuple(events),
            latency_ms={k: u.latency_s * 1e3 for k, u in sorted(self._latest.items())},
            health=self.health_states(), seqs={k: u.seq for k, u in sorted(self._latest.items())},
        )

    def _recognise(self, stream: str, embedding: np.ndarray, now: float) -> list[Event]:
        assert self.recognizer is not None
        cos, prob = self.recognizer.scores(embedding)
        order = np.argsort(-cos, kind="stable")[: self.recognizer.k]
        self._top_k[stream] = [(self.recognizer.labels[i], float(cos[i]), float(prob[i])) for i in order]
        if self.config.hysteresis is None:
            return []
        tracker = self._trackers.get(stream)
        if tracker is None:
            tracker = self._trackers[stream] = HysteresisTracker(stream, self.recognizer.labels, self.config.hysteresis)
        return tracker.update(now, cos, prob)

    # -- consuming ---------------------------------------------------------------------------------
    def results(self, *, poll_s: float = 0.05) -> Iterator[Result]:
        """Yield results until ``stop()`` or until every source has ended and all data is processed."""
        self.start()
        while True:
            item = self._queue.get(poll_s)
            if item is not None:
                yield item
                continue
            if self._stopped or self._queue.closed or self._drained():
                while (item := self._queue.get(0)) is not None:
                    yield item
                return

    def run(self, callback: Callable[[Result], Any], duration: float | None = None) -> dict[str, Any]:
        """Call ``callback(result)`` for every result (in this thread) until ``duration`` seconds have
        passed or the sources have ended; always stops the runtime. Returns ``summary()``."""
        deadline = None if duration is None else time.monotonic() + float(duration)
        try:
            self.start()
            while deadline is None or time.monotonic() < deadline:
                item = self._queue.get(0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic())))
                if item is not None:
                    callback(item)
                elif self._stopped or self._drained():
                    break
        finally:
            self.stop()
        return self.summary()

    def _drained(self) -> bool:
        """All sources ended, nothing left to embed and no result waiting."""
        ended = all(s.health().state in ("finished", "failed", "stopped") for s in self.sources)
        if not ended or len(self._queue):
            return False
        if self.mode == "deterministic":
            return True
        return all(not w.busy and not (w.lane.window.has_new and w.lane.window.ready) for w in self._workers.values())

    # -- stopping ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop sources and workers within ``stop_timeout_s``, then flush the recorder and close owned engines."""
        if self._stopped:
            return
        self._stopped = True
        budget = self.config.stop_timeout_s
        deadline = time.monotonic() + budget
        for w in self._workers.values():
            w.request_stop()
        self._queue.close()
        from .sources.base import stop_all

        stop_all(self.sources, 0.8 * budget)
        finished = {m: w.join(deadline - time.monotonic()) for m, w in self._workers.items()}
        if self.recorder is not None:
            try:
                self.recorder.close([s.health() for s in self.sources])
            except Exception:  # noqa: BLE001
                self.recorder_errors += 1
                logger.exception("closing the recorder failed")
        for m, engine in self._owned.items():
            if not finished.get(m, True):
                logger.warning("%s engine still running at stop; not closing it", m)
                continue
            try:
                engine.close()
            except Exception:  # noqa: BLE001
                logger.exception("closing the %s engine failed", m)
        for lane in self._lanes.values():
            lane.sync_counters()

    def __enter__(self) -> "Runtime":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- reporting ---------------------------------------------------------------------------------
    def health_states(self) -> dict[str, str]:
        return {s.name: s.health().state for s in self.sources}

    def summary(self) -> dict[str, Any]:
        """Mode, metrics snapshot (latency percentiles, counters) and source health, JSON-ready."""
        for lane in self._lanes.values():
            lane.sync_counters()
        return {
            "mode": self.mode,
            "engines": {m: {"backend": getattr(lane.engine, "backend", None),
                            "precision": getattr(lane.engine, "precision", None),
                            "form": getattr(lane.engine, "form", None)} for m, lane in self._lanes.items()},
            "metrics": self.metrics.snapshot(),
            "health": {s.name: _health_dict(s.health()) for s in self.sources},
            "unrouted_samples": self.unrouted,
            "recorder_errors": self.recorder_errors,
        }

    def latency_table(self) -> str:
        return format_latency_table(self.summary()["metrics"])


def _health_dict(health: Any) -> dict[str, Any]:
    if hasattr(health, "to_dict"):
        return health.to_dict()
    return {"state": getattr(health, "state", str(health))}


@dataclasses.dataclass(frozen=True)
class RunOptions(ConfigMixin):
    """What ``edgebind run`` asks for: a bundle, live source specs or a replay, labels, a recording."""

    bundle: str = "export/imagebind_tiny"
    sources: tuple[str, ...] = ()
    """Source specs (``edgebind.runtime.sources.open_source``), e.g. ``camera:0``, ``mic:default``."""
    replay: Optional[str] = None
    """A recording folder or rosbag2/MCAP bag to replay instead of live sources."""
    realtime: bool = False
    """Replay at recorded speed (live mode) instead of as fast as possible (deterministic)."""
    labels: Optional[str] = None
    """Label bank JSON; None: the bundle's own (``manifest.label_bank``) if it has one."""
    record: Optional[str] = None
    """Also record every sample into this folder (complete even after Ctrl-C)."""
    duration_s: Optional[float] = None
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


def run_runtime(options: RunOptions, on_result: Callable[[Result], Any]) -> dict[str, Any]:
    """Open the sources, run until the duration, the end of the replay or Ctrl-C, return ``summary()``
    plus ``interrupted`` and ``latency_table``. Ctrl-C stops everything within ``stop_timeout_s``."""
    from .sources import open_replay, open_source

    if bool(options.sources) == bool(options.replay):
        raise ConfigError("edgebind run: give live sources (--camera/--mic/--imu/--source) or --replay PATH, not both")
    sources = open_replay(options.replay, realtime=options.realtime) if options.replay else \
        [open_source(spec) for spec in options.sources]
    labels: Any = options.labels
    if labels is None:
        record = load_manifest(options.bundle).label_bank
        if record is not None:
            labels = Path(options.bundle) / record.file
        else:
            logger.warning("no label bank (--labels, or `edgebind labels --bundle %s`): results carry no top-k",
                           options.bundle)
    runtime = Runtime(options.bundle, sources, labels, options.runtime)
    if options.record:
        from .recording import RecordingWriter

        runtime.recorder = RecordingWriter(options.record)
    interrupted = False
    try:
        summary = runtime.run(on_result, duration=options.duration_s)
    except KeyboardInterrupt:
        interrupted = True
        runtime.stop()
        summary = runtime.summary()
    summary["interrupted"] = interrupted
    summary["latency_table"] = format_latency_table(summary["metrics"])
    return summary
