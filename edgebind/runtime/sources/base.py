"""The source contract: timestamped :class:`Sample` objects, :class:`Source` health, retry and clock checks.

Every live or replayed sensor is a :class:`Source`. ``start(sink)`` starts the source's own daemon
thread, which calls ``sink(sample)`` for every accepted sample; ``stop(timeout)`` returns within the
timeout; ``health()`` returns a :class:`SourceHealth` snapshot.

Time. ``Sample.t_capture`` is ``time.monotonic()`` seconds at capture, one clock for every source in
the process. For chunked streams (audio, IMU) ``t_capture`` and ``t_device`` refer to the *first*
sample/row of the chunk; IMU chunks carry per-row monotonic times in ``meta["t"]``. ``t_device`` is
the sensor's own timestamp in seconds when the sensor gives one (its epoch is the sensor's).

Data per modality (the pipeline relies on this):

- vision: uint8 H x W x 3 RGB;  depth: float32 H x W metres, 0 = invalid (meta ``fx``, ``baseline``
  when known);  thermal: uint16 H x W raw (meta ``format`` "y16") or uint8 H x W ("u8");
- audio: float32 [n] or [n, ch] at ``meta["rate"]``;  imu: float64 [n, 6] (ax, ay, az m/s^2, gx, gy,
  gz rad/s) with ``meta["t"]`` float64 [n] monotonic seconds.

Faults. :class:`StreamSource` (the base class of the concrete sources) opens the device, reads in a
loop and, when opening or reading raises, closes the device, marks itself ``"retrying"`` and retries
with exponential backoff (:class:`RetryPolicy`: 0.5 s doubling up to 10 s); other sources are not
affected. Bad content (corrupt frames, NaN/inf, garbage bytes) is counted in ``rejected`` and never
reaches the sink. An exception raised *by the sink* is logged and counted in ``errors``; it never
stops the source.

Clock jumps (:class:`ClockGuard`): a ``t_device`` that goes backwards by more than
``max_backward_s`` or forwards by more than ``max_jump_s`` relative to the last accepted one is counted
in ``clock_jumps``. With ``policy="reject"`` (default) that sample is also counted in ``rejected``
and dropped; when ``resync_after`` consecutive jumped samples are consistent with each other (each
within the bounds of the previous one), the guard accepts the new timeline (a sensor that reset its
clock) and the sample that completes the resync is delivered. With ``policy="rebase"`` the sample is
delivered and the guard adopts its timeline at once. Either way ``t_capture`` (host monotonic) is
never altered.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np

from ..._config import ConfigMixin
from ...errors import ConfigError
from ...modality import Modality

logger = logging.getLogger(__name__)

SourceStateName = Literal["starting", "ok", "retrying", "failed", "stopped", "finished"]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One timestamped unit of sensor data (a frame, an audio chunk, a block of IMU rows)."""

    source: str
    modality: Modality
    t_capture: float
    t_device: Optional[float]
    data: np.ndarray
    seq: int
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


Sink = Callable[[Sample], None]


@dataclasses.dataclass(frozen=True)
class SourceHealth:
    """A snapshot of a source's state and counters (all counters are totals since construction)."""

    name: str
    modality: Modality
    state: SourceStateName
    samples: int = 0
    rejected: int = 0
    dropped: int = 0
    errors: int = 0
    reconnects: int = 0
    clock_jumps: int = 0
    last_error: Optional[str] = None
    t_last_sample: Optional[float] = None

    @property
    def healthy(self) -> bool:
        return self.state in ("starting", "ok", "finished")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modality"] = self.modality.value
        return d


@dataclasses.dataclass(frozen=True)
class RetryPolicy(ConfigMixin):
    """Exponential backoff between reconnect attempts: initial, initial*factor, ... capped at max_s."""

    initial_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0
    max_attempts: Optional[int] = None
    """Consecutive failed attempts after which the source gives up (state "failed"); None: never."""

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and self.max_s >= self.initial_s and self.factor >= 1.0):
            raise ConfigError(
                "RetryPolicy: expected initial_s > 0, max_s >= initial_s and factor >= 1, "
                f"got {self.initial_s!r}, {self.max_s!r}, {self.factor!r}"
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts: expected None or >= 1, got {self.max_attempts!r}")

    def delay(self, attempt: int) -> float:
        """Backoff before retry number ``attempt`` (1-based)."""
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))


@dataclasses.dataclass(frozen=True)
class ClockConfig(ConfigMixin):
    """Bounds for device timestamps (see the module docstring)."""

    max_jump_s: float = 2.0
    max_backward_s: float = 0.0
    policy: Literal["reject", "rebase"] = "reject"
    resync_after: int = 3

    def __post_init__(self) -> None:
        if not (self.max_jump_s > 0 and self.max_backward_s >= 0 and self.resync_after >= 1):
            raise ConfigError(
                "ClockConfig: expected max_jump_s > 0, max_backward_s >= 0, resync_after >= 1, got "
                f"{self.max_jump_s!r}, {self.max_backward_s!r}, {self.resync_after!r}"
            )


class ClockGuard:
    """Checks a sequence of device timestamps; ``check(t)`` returns True when the sample may pass."""

    def __init__(self, config: ClockConfig | None = None):
        self.config = config or ClockConfig()
        self._last: Optional[float] = None
        self._pending: list[float] = []
        self.jumps = 0

    def reset(self) -> None:
        self._last = None
        self._pending.clear()

    def _consistent(self, prev: float, t: float) -> bool:
        return -self.config.max_backward_s <= t - prev <= self.config.max_jump_s

    def check(self, t: Optional[float]) -> bool:
        if t is None:
            return True
        if self._last is None or self._consistent(self._last, t):
            self._last = t
            self._pending.clear()
            return True
        self.jumps += 1
        if self.config.policy == "rebase":
            self._last = t
            return True
        if self._pending and not self._consistent(self._pending[-1], t):
            self._pending.clear()
        self._pending.append(t)
        if len(self._pending) >= self.config.resync_after:
            logger.warning("device clock resynchronised: %.6f s -> %.6f s", self._last, t)
            self._last = t
            self._pending.clear()
            return True
        return False


class EndOfStream(Exception):
    """Raised by a source's read when a finite stream (file, replay) has no more data."""


class Source(abc.ABC):
    """A sensor stream. See the module docstring for the threading, fault and time contract."""

    name: str
    modality: Modality

    @abc.abstractmethod
    def start(self, sink: Sink) -> None:
        """Start the source's daemon thread; ``sink`` is called (from that thread) for each sample."""

    @abc.abstractmethod
    def stop(self, timeout: float = 1.0) -> None:
        """Stop and release the device; idempotent; returns within ``timeout`` seconds."""

    @abc.abstractmethod
    def health(self) -> SourceHealth:
        """A snapshot of state and counters."""

    def request_stop(self) -> None:
        """Ask the source to stop without waiting (``stop_all`` uses it to stop many in parallel)."""

    @property
    def finished(self) -> bool:
        """True once a finite source (file, replay, synthetic with a count) has delivered everything."""
        return self.health().state == "finished"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, modality={self.modality.value!r})"


def stop_all(sources: Sequence[Source], timeout: float = 1.0) -> None:
    """Stop every source, all at once, within ``timeout`` seconds in total."""
    deadline = time.monotonic() + timeout
    for src in sources:
        try:
            src.request_stop()
        except Exception:  # noqa: BLE001 - stopping must go on for the others
            logger.exception("request_stop failed for %r", src)
    for src in sources:
        try:
            src.stop(max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001
            logger.exception("stop failed for %r", src)


class StreamSource(Source):
    """Threaded source with open / read / close hooks, retry with backoff, validation and counters.

    Subclasses implement ``_open()`` (raise on failure), ``_read()`` (block briefly for data and call
    ``self._emit(...)`` for each sample; raise :class:`EndOfStream` at the end of a finite stream;
    raise anything else on a device fault) and ``_close()``. ``_interrupt()`` may unblock a pending
    read when stop is requested.
    """

    def __init__(
        self,
        name: str,
        modality: Modality | str,
        *,
        retry: RetryPolicy | None = None,
        clock: ClockConfig | None = None,
    ):
        self.name = str(name)
        self.modality = Modality.parse(modality)
        self.retry = retry or RetryPolicy()
        self._guard = ClockGuard(clock)
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sink: Optional[Sink] = None
        self._state: SourceStateName = "starting"
        self._counts = dict(samples=0, rejected=0, dropped=0, errors=0, reconnects=0)
        self._last_error: Optional[str] = None
        self._t_last: Optional[float] = None
        self._seq = 0
        self._ever_opened = False

    # ----------------------------------------------------------------- hooks
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _read(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def _interrupt(self) -> None:
        """Called from ``request_stop`` (another thread): unblock a pending read if the device allows."""

    # ----------------------------------------------------------- public API
    def start(self, sink: Sink) -> None:
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"source {self.name!r} was already started")
            self._sink = sink
            self._thread = threading.Thread(target=self._run, name=f"edgebind-src-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        if not self._stop_event.is_set():
            self._stop_event.set()
            try:
                self._interrupt()
            except Exception:  # noqa: BLE001
                logger.debug("%s: interrupt failed", self.name, exc_info=True)

    def stop(self, timeout: float = 1.0) -> None:
        self.request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
            if thread.is_alive():
                logger.warning("source %r did not stop within %.2f s (daemon thread left running)", self.name, timeout)
        with self._lock:
            if self._state != "finished" and self._state != "failed":
                self._state = "stopped"

    def health(self) -> SourceHealth:
        with self._lock:
            return SourceHealth(
                name=self.name,
                modality=self.modality,
                state=self._state,
                clock_jumps=self._guard.jumps,
                last_error=self._last_error,
                t_last_sample=self._t_last,
                **self._counts,
            )

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns True early when stop was requested."""
        return self._stop_event.wait(max(0.0, seconds))

    # ------------------------------------------------------ subclass helpers
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _reject(self, reason: str, n: int = 1) -> None:
        self._count("rejected", n)
        logger.debug("%s: rejected %d: %s", self.name, n, reason)

    def _check_clock(self, t_device: Optional[float]) -> bool:
        with self._lock:
            before = self._guard.jumps
            ok = self._guard.check(t_device)
            if not ok:
                self._counts["rejected"] += 1
        if self._guard.jumps != before:
            logger.debug("%s: device clock jump at t_device=%r (%s)", self.name, t_device, "kept" if ok else "rejected")
        return ok

    def _emit(
        self,
        data: np.ndarray,
        *,
        t_capture: Optional[float] = None,
        t_device: Optional[float] = None,
        meta: Optional[Mapping[str, Any]] = None,
        check_clock: bool = True,
        check_finite: bool = True,
    ) -> bool:
        """Validate and deliver one sample; returns False when it was rejected."""
        t_capture = time.monotonic() if t_capture is None else float(t_capture)
        if not isinstance(data, np.ndarray) or data.size == 0:
            self._reject("empty or non-array data")
            return False
        if check_finite and data.dtype.kind == "f" and not np.isfinite(data).all():
            self._reject("NaN/inf values")
            return False
        if check_clock and not self._check_clock(t_device):
            return False
        sample = Sample(self.name, self.modality, t_capture, t_device, data, self._seq, dict(meta or {}))
        self._seq += 1
        with self._lock:
            self._counts["samples"] += 1
            self._t_last = t_capture
        sink = self._sink
        if sink is not None:
            try:
                sink(sample)
            except Exception as exc:  # noqa: BLE001 - a faulty sink must not kill the source
                with self._lock:
                    self._counts["errors"] += 1
                    self._last_error = f"sink raised {type(exc).__name__}: {exc}"
                logger.exception("%s: sink raised", self.name)
        return True

    def _set_state(self, state: SourceStateName) -> None:
        with self._lock:
            self._state = state

    # ------------------------------------------------------------ the loop
    def _run(self) -> None:
        attempt = 0
        while not self._stop_event.is_set():
            try:
                self._open()
            except Exception as exc:  # noqa: BLE001
                attempt += 1
                if not self._backoff(exc, attempt, "open"):
                    return
                continue
            if self._ever_opened:
                self._count("reconnects")
                logger.info("%s: reconnected after %d attempt(s)", self.name, attempt)
            self._ever_opened = True
            attempt = 0
            self._set_state("ok")
            try:
                while not self._stop_event.is_set():
                    self._read()
            except EndOfStream:
                self._safe_close()
                self._set_state("finished")
                logger.info("%s: end of stream after %d samples", self.name, self._counts["samples"])
                return
            except Exception as exc:  # noqa: BLE001
                self._safe_close()
                attempt += 1
                if not self._backoff(exc, attempt, "read"):
                    return
                continue
            self._safe_close()
        self._set_state("stopped")

    def _safe_close(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001
            logger.debug("%s: close failed", self.name, exc_info=True)

    def _backoff(self, exc: BaseException, attempt: int, what: str) -> bool:
        """Record a failure; wait the backoff. Returns False when the loop must end."""
        message = f"{what} failed: {type(exc).__name__}: {exc}"
        with self._lock:
            self._counts["errors"] += 1
            self._last_error = message
        if self.retry.max_attempts is not None and attempt >= self.retry.max_attempts:
            logger.error("%s: %s; giving up after %d attempt(s)", self.name, message, attempt)
            self._set_state("failed")
            return False
        delay = self.retry.delay(attempt)
        logger.warning("%s: %s; retrying in %.2f s", self.name, message, delay)
        self._guard.reset()
        self._set_state("retrying")
        if self._stop_event.wait(delay):
            self._set_state("stopped")
            return False
        return True
