"""Per-modality inference scheduling: one :class:`Lane` per modality (window + engine + target rate).

A lane is *due* when its window holds new data, is ready, and the lane's clock has reached
``next_due``; ``step`` then takes the newest window, runs the engine and returns an
:class:`EmbeddingUpdate`. Cadence: after a run ``next_due`` advances by one period (``1 / rate_hz``,
for audio the hop); a lane that ran more than a period late restarts its cadence from now instead of
bursting to catch up. Two drivers:

- **live** (:class:`LaneWorker`): one daemon thread per lane on the ``time.monotonic()`` clock. Sources
  only push into windows, never wait for an engine. A due lane runs on the first data that arrives at or
  after its due time, not on data that was already waiting (it waits at most ``fresh_wait_s``, default
  one period, and at most 1.5x the source's mean time between pushes, so a stream that ended or stalled
  costs one push interval). With 10 Hz IMU chunks and a 2 Hz lane, running at the due time embedded a
  chunk 0-100 ms old (capture-to-embedding 85 ms mean for a 36 ms engine on imagebind_huge); on arrival
  it is the engine time. Under overload the newest data wins: a frame that
  is replaced after its slot came counts as ``stale``, an audio/IMU hop that is never computed as a
  skipped hop; nothing queues up, so memory is bounded by the windows.
- **deterministic** (:meth:`Lane.offer`): the sample's own data time is the clock and the lane runs
  inline, in the caller's thread, as soon as a sample makes it due. Used for replay as fast as
  possible, where the replay clock calls sinks one at a time in timestamp order: the same recording
  then gives the same windows, embeddings and results on every run (nothing depends on host speed).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from typing import Any, Callable, Optional

import numpy as np

from .._logging import log_once
from ..errors import ConfigError, EdgebindError, PreprocessError
from .metrics import ModalityMetrics, RuntimeMetrics
from .windows import AudioWindow, ImuWindow, Window

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingUpdate", "Lane", "LaneWorker", "ResultQueue"]

_DUE_EPS_S = 1e-6  # sums of periods drift by float rounding; a frame at 0.6 s is due at 0.2 + 0.2 + 0.2


@dataclasses.dataclass(frozen=True)
class EmbeddingUpdate:
    """A new embedding of one modality."""

    modality: str
    source: str
    embedding: np.ndarray
    """float32 [D] as the engine returned it."""
    t_data: float
    """Data-clock time of the newest data in the embedded window."""
    seq: int
    latency_s: float
    """Capture (live; clamped to arrival) or arrival (deterministic) of the newest data -> embedding ready."""
    preprocess_s: float
    inference_s: float
    index: int
    """Per-lane counter of embeddings (0, 1, ...)."""


class Lane:
    """Window + engine + schedule of one modality (see the module docstring)."""

    def __init__(
        self,
        modality: str,
        window: Window,
        engine: Any,
        rate_hz: float,
        metrics: ModalityMetrics | None = None,
        *,
        latency_from: str = "capture",
    ) -> None:
        if not (isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and rate_hz > 0):
            raise ConfigError(f"rate of the {modality} lane: expected a positive number of Hz, got {rate_hz!r}")
        if latency_from not in ("capture", "arrival"):
            raise ConfigError(f"latency_from: expected 'capture' or 'arrival', got {latency_from!r}")
        self.modality = modality
        self.window = window
        self.engine = engine
        self.period_s = 1.0 / float(rate_hz)
        self.metrics = metrics or ModalityMetrics(modality)
        self.latency_from = latency_from
        self.next_due = -math.inf
        self._last_t_data: Optional[float] = None
        self._sliding = isinstance(window, (AudioWindow, ImuWindow))
        self._count = 0
        self._step_lock = threading.Lock()

    # -- feeding -------------------------------------------------------------------------------
    def push(self, sample: Any, t: float) -> bool:
        """Store a sample in the window (never blocks on the engine)."""
        return self.window.push(sample, t)

    def due(self, now: float) -> bool:
        w = self.window
        return w.has_new and w.ready and now >= self.next_due - _DUE_EPS_S

    def offer(self, sample: Any, t: float) -> Optional[EmbeddingUpdate]:
        """Deterministic driver: push, and run inline when this sample makes the lane due (clock = ``t``)."""
        if not self.push(sample, t):
            return None
        return self.step(t) if self.due(t) else None

    # -- running -------------------------------------------------------------------------------
    def step(self, now: float) -> Optional[EmbeddingUpdate]:
        """Take the newest window and embed it; None when there was nothing to take or it failed (counted)."""
        with self._step_lock:
            m = self.metrics
            try:
                inp = self.window.take()
            except PreprocessError as exc:
                m.preprocess_errors += 1
                m.last_error = f"preprocess: {exc}"
                log_once(logger, logging.WARNING, "%s: preprocessing failed (logged once): %s", self.modality, exc)
                self._advance(now)
                return None
            if inp is None:
                return None
            self._advance(now)
            start = time.perf_counter()
            try:
                out = np.asarray(self.engine.run(inp.batch))
            except Exception as exc:  # noqa: BLE001 - an engine fault must not end the lane
                m.engine_errors += 1
                m.last_error = f"engine: {type(exc).__name__}: {exc}"
                level = logging.WARNING if isinstance(exc, EdgebindError) else logging.ERROR
                log_once(logger, level, "%s: engine run failed (logged once; counted in engine_errors): %s",
                         self.modality, m.last_error)
                return None
            inference_s = time.perf_counter() - start
            done = time.monotonic()
            if out.ndim != 2 or out.shape[0] != 1 or not np.isfinite(out).all():
                m.engine_errors += 1
                m.last_error = f"engine: returned shape {out.shape} or non-finite values; expected finite [1, D]"
                log_once(logger, logging.WARNING, "%s: %s", self.modality, m.last_error)
                return None
            if self.latency_from == "capture":
                # Live: data time is t_capture (monotonic). A chunk stamped so that its end lies after its
                # arrival (a synthetic or pre-stamped stream) is clamped to the arrival time.
                t_data = min(inp.t_data, inp.t_arrival)
                latency = done - t_data
            else:
                t_data, latency = inp.t_data, done - inp.t_arrival
            if self._sliding and self._last_t_data is not None:
                hops = math.floor((t_data - self._last_t_data) / self.period_s + 1e-6)
                m.skipped_hops += max(0, hops - 1)
            self._last_t_data = t_data
            m.windows += 1
            m.latency.add(latency)
            m.preprocess.add(inp.preprocess_s)
            m.inference.add(inference_s)
            index = self._count
            self._count += 1
            return EmbeddingUpdate(self.modality, inp.source, out[0].astype(np.float32), t_data, inp.seq,
                                   latency, inp.preprocess_s, inference_s, index)

    def _advance(self, now: float) -> None:
        late = now - self.next_due
        self.next_due = now + self.period_s if late > self.period_s else self.next_due + self.period_s
        self.window.due_at = self.next_due

    def sync_counters(self) -> None:
        """Copy the window's counters (written by source threads) into the metrics."""
        m, w = self.metrics, self.window
        m.stale, m.decimated, m.rejected = w.stale, w.decimated, w.rejected + getattr(w, "rejected_rows", 0)


class LaneWorker:
    """Live driver: a daemon thread that steps one lane on the monotonic clock (see the module docstring)."""

    def __init__(self, lane: Lane, emit: Callable[[EmbeddingUpdate], None], *, poll_s: float = 0.05,
                 fresh_wait_s: float | None = None) -> None:
        self.lane = lane
        self.emit = emit
        self.poll_s = poll_s
        self.fresh_wait_s = lane.period_s if fresh_wait_s is None else max(0.0, fresh_wait_s)
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"edgebind-lane-{lane.modality}", daemon=True)
        self.busy = False

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """Called after a push: wake the worker if it waits for data."""
        with self._wake:
            self._wake.notify()

    def request_stop(self) -> None:
        self._stop.set()
        self.notify()

    def join(self, timeout: float) -> bool:
        """Wait for the thread; True when it ended (a running engine call cannot be interrupted)."""
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _run(self) -> None:
        lane = self.lane
        while not self._stop.is_set():
            now = time.monotonic()
            if not (lane.window.has_new and lane.window.ready):
                with self._wake:
                    self._wake.wait(self.poll_s)
                continue
            if now < lane.next_due:
                self._stop.wait(min(lane.next_due - now, self.poll_s))
                continue
            waited = now - lane.next_due
            interval = lane.window.arrival_interval
            limit = self.fresh_wait_s if interval is None else min(self.fresh_wait_s, 1.5 * interval)
            if lane.window.last_arrival < lane.next_due and waited < limit:
                # Due, but the newest data predates the slot: the next push is fresher (see the module docstring).
                with self._wake:
                    self._wake.wait(min(limit - waited, self.poll_s))
                continue
            self.busy = True
            try:
                update = lane.step(now)
                if update is not None and not self._stop.is_set():
                    self.emit(update)
            except Exception:  # noqa: BLE001 - keep the lane alive; the error is in the log
                logger.exception("%s lane: unexpected error", lane.modality)
                self._stop.wait(self.poll_s)
            finally:
                self.busy = False


class ResultQueue:
    """Bounded hand-over of results to the consumer: when full, the oldest is dropped and counted in
    ``metrics.results_dropped`` (``block=False``, live) or the producer waits (``block=True``,
    deterministic; ``close()`` releases it)."""

    def __init__(self, size: int, block: bool, metrics: RuntimeMetrics) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._size, self._block, self._metrics = size, block, metrics
        self._cond = threading.Condition()
        self.closed = False

    def put(self, item: Any) -> None:
        with self._cond:
            while self._block and len(self._items) >= self._size and not self.closed:
                self._cond.wait(0.05)
            if self.closed:
                return
            if len(self._items) >= self._size:
                self._items.popleft()
                self._metrics.results_dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float) -> Optional[Any]:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)
