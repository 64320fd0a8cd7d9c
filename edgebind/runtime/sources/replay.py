"""Deterministic replay of recordings (folders written by :mod:`edgebind.runtime.recording`) and bags.

``open_replay(path, realtime=False)`` returns one :class:`ReplaySource` per stream, all sharing one
:class:`ReplayClock`. How the order is made deterministic: each source thread *proposes* the recorded
timestamp of its next sample to the clock and waits; the clock grants the turn only when every
registered source has proposed (or finished), and only to the smallest ``(timestamp, registration
index)``. The turn is held while the sink runs, so sinks are called one at a time in timestamp order,
identically on every run, whether ``realtime`` or as fast as possible. With ``realtime=True`` the
turn holder additionally waits until ``wall0 + (t - t0) / speed``.

Start every source that ``open_replay`` returned (or pick streams with ``streams=``): a registered
source that is not started within ``start_grace_s`` (default 2 s) of the first start is dropped from
the clock with a warning, so the others do not wait forever (the order with it is then not
guaranteed). Stopping a source removes it from the clock.

Times delivered: as fast as possible, ``t_capture`` is the *recorded* capture time (so windows and
results do not depend on the host's speed); in real time it is ``time.monotonic()``-based
(``wall0 + (t - t0) / speed``). ``meta["t_recorded"]`` always holds the recorded time.
"""

from __future__ import annotations

import abc
import csv
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from ..._lazy import require
from ...errors import StreamError
from ...modality import Modality
from .base import EndOfStream, RetryPolicy, Source, StreamSource

logger = logging.getLogger(__name__)

Event = tuple[float, np.ndarray, Optional[float], dict]
"""(recorded t_capture, data, t_device, meta) of one sample to replay."""


class ReplayClock:
    """Orders sample delivery across replay sources by recorded timestamp (see the module docstring)."""

    def __init__(self, *, realtime: bool = False, speed: float = 1.0, start_grace_s: float = 2.0):
        if not speed > 0:
            raise StreamError(f"ReplayClock speed: expected > 0, got {speed!r}")
        self.realtime, self.speed, self.start_grace_s = realtime, float(speed), float(start_grace_s)
        self._cond = threading.Condition()
        self._order: dict[int, int] = {}
        self._next: dict[int, Optional[float]] = {}
        self._started: set[int] = set()
        self._first_start: Optional[float] = None
        self._t0: Optional[float] = None
        self._wall0: Optional[float] = None
        self._holder: Optional[int] = None

    def register(self, key: int) -> None:
        with self._cond:
            self._order.setdefault(key, len(self._order))
            self._next[key] = None

    def mark_started(self, key: int) -> None:
        with self._cond:
            self._started.add(key)
            if self._first_start is None:
                self._first_start = time.monotonic()
            self._cond.notify_all()

    def unregister(self, key: int) -> None:
        with self._cond:
            self._next.pop(key, None)
            if self._holder == key:
                self._holder = None
            self._cond.notify_all()

    def map_time(self, t: float) -> float:
        """Recorded time -> delivered ``t_capture`` (identity unless realtime)."""
        if not self.realtime or self._t0 is None or self._wall0 is None:
            return t
        return self._wall0 + (t - self._t0) / self.speed

    def _drop_unstarted(self) -> None:
        if self._first_start is None or time.monotonic() - self._first_start < self.start_grace_s:
            return
        for key in [k for k in self._next if k not in self._started]:
            logger.warning("replay clock: source %d was not started within %.1f s; no longer waiting for it", key, self.start_grace_s)
            self._next.pop(key)

    def _my_turn(self, key: int) -> bool:
        if self._holder is not None or key not in self._next:
            return self._holder is None and key not in self._next
        if any(v is None for v in self._next.values()):
            return False
        best = min(self._next, key=lambda k: (self._next[k], self._order[k]))
        return best == key

    def acquire(self, key: int, t: float, stop: threading.Event) -> bool:
        """Block until ``key`` may deliver its sample at recorded time ``t``; False when stopped."""
        with self._cond:
            if key in self._next:
                self._next[key] = t
                self._cond.notify_all()
            while not self._my_turn(key):
                if stop.is_set():
                    return False
                self._drop_unstarted()
                self._cond.wait(0.05)
            self._holder = key
            if self._t0 is None:
                self._t0, self._wall0 = t, time.monotonic()
            target = self._wall0 + (t - self._t0) / self.speed if self.realtime else None
        if target is not None and stop.wait(max(0.0, target - time.monotonic())):
            self.release(key)
            return False
        return True

    def release(self, key: int) -> None:
        with self._cond:
            if key in self._next:
                self._next[key] = None
            if self._holder == key:
                self._holder = None
            self._cond.notify_all()


class ReplaySource(StreamSource):
    """A finite source that replays :data:`Event` tuples in order under a :class:`ReplayClock`."""

    _keys = iter(range(1 << 62))
    _keys_lock = threading.Lock()

    def __init__(self, name: str, modality: Modality | str, *, clock: ReplayClock | None = None, realtime: bool = False):
        super().__init__(name, modality, retry=RetryPolicy(max_attempts=1))
        self.clock = clock or ReplayClock(realtime=realtime)
        with ReplaySource._keys_lock:
            self._key = next(ReplaySource._keys)
        self.clock.register(self._key)
        self._events_it: Optional[Iterator[Event]] = None

    @abc.abstractmethod
    def _events(self) -> Iterator[Event]:
        """Yield the stream's samples in recorded order (may yield None data to count a corrupt one)."""

    def start(self, sink: Any) -> None:
        self.clock.mark_started(self._key)
        super().start(sink)

    def stop(self, timeout: float = 1.0) -> None:
        self.clock.unregister(self._key)
        super().stop(timeout)

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            self.clock.unregister(self._key)

    def _open(self) -> None:
        if self._events_it is None:
            self._events_it = iter(self._events())

    def _close(self) -> None:
        pass

    def _read(self) -> None:
        assert self._events_it is not None
        try:
            t, data, t_device, meta = next(self._events_it)
        except StopIteration:
            raise EndOfStream() from None
        if not self.clock.acquire(self._key, t, self._stop_event):
            return
        try:
            meta = dict(meta)
            meta["t_recorded"] = t
            if self.clock.realtime and "t" in meta:
                meta["t"] = np.array([self.clock.map_time(float(x)) for x in meta["t"]])
            if data is None:
                self._reject("corrupt or unreadable frame in the recording")
            else:
                self._emit(data, t_capture=self.clock.map_time(t), t_device=t_device, meta=meta)
        finally:
            self.clock.release(self._key)


def _read_timestamps(path: Path) -> list[tuple[float, Optional[float]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return [(float(r["t_capture"]), float(r["t_device"]) if r.get("t_device") else None) for r in rows]
    except (KeyError, ValueError) as exc:
        raise StreamError(f"{path}: expected columns seq,t_capture,t_device with numbers ({exc})") from None


class FolderStreamSource(ReplaySource):
    """Replays one stream of a recording folder (see :mod:`edgebind.runtime.recording`)."""

    def __init__(self, folder: str | Path, name: str, entry: dict, *, clock: ReplayClock | None = None,
                 realtime: bool = False, audio_chunk_s: float = 0.1):
        super().__init__(name, entry["modality"], clock=clock, realtime=realtime)
        self.folder, self.entry, self.audio_chunk_s = Path(folder), entry, audio_chunk_s
        self._meta = dict(entry.get("meta") or {})

    def _file(self, key: str) -> Path:
        try:
            path = self.folder / self.entry["files"][key]
        except KeyError:
            raise StreamError(f"{self.folder}/recording.json: streams.{self.name}.files.{key}: missing") from None
        if not path.exists():
            raise StreamError(f"{path}: listed in recording.json but missing")
        return path

    def _events(self) -> Iterator[Event]:
        kind = self.entry["kind"]
        if kind == "video":
            return self._video()
        if kind == "wav":
            return self._wav()
        if kind == "frames":
            return self._frames()
        if kind == "csv":
            return self._imu()
        raise StreamError(f"{self.folder}/recording.json: streams.{self.name}.kind: unknown kind {kind!r}")

    def _video(self) -> Iterator[Event]:
        cv2 = require("cv2", extra="sensors", purpose="replaying video")
        stamps = _read_timestamps(self._file("timestamps"))
        cap = cv2.VideoCapture(str(self._file("data")))
        if not cap.isOpened():
            raise StreamError(f"{self._file('data')}: OpenCV cannot open the video")
        try:
            for i, (t, td) in enumerate(stamps):
                ok, frame = cap.read()
                if not ok:
                    logger.warning("%s: video has %d frames, timestamps list %d", self._file("data"), i, len(stamps))
                    return
                yield t, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), td, {"format": "rgb", "frame": i}
        finally:
            cap.release()

    def _wav(self) -> Iterator[Event]:
        sf = require("soundfile", extra="sensors", purpose="replaying audio")
        path = self._file("data")
        t0 = float(self._meta.get("t0", 0.0))
        with sf.SoundFile(str(path)) as f:
            rate = f.samplerate
            n = max(1, int(round(self.audio_chunk_s * rate)))
            start = 0
            while True:
                block = f.read(n, dtype="float32", always_2d=True)
                if len(block) == 0:
                    return
                data = block[:, 0].copy() if block.shape[1] == 1 else block
                yield t0 + start / rate, data, None, {"rate": rate}
                start += len(block)

    def _frames(self) -> Iterator[Event]:
        stamps = _read_timestamps(self._file("timestamps"))
        d = self._file("dir")
        fmt = self._meta.get("format", "npy" if self.modality is Modality.DEPTH else "png16")
        meta = {k: v for k, v in self._meta.items() if k != "format"}
        meta["format"] = {"png16": "y16", "png8": "u8"}.get(fmt, fmt)
        cv2 = None if fmt == "npy" else require("cv2", extra="sensors", purpose="replaying frames")
        for i, (t, td) in enumerate(stamps):
            frame: Optional[np.ndarray]
            try:
                if fmt == "npy":
                    frame = np.load(d / f"{i:06d}.npy", allow_pickle=False)
                else:
                    frame = cv2.imread(str(d / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
            except (OSError, ValueError):
                frame = None
            yield t, frame, td, dict(meta, frame=i)

    def _imu(self) -> Iterator[Event]:
        path = self._file("data")
        table = load_imu_csv(path)
        seq = table.get("seq")
        groups = (np.split(np.arange(len(table["t"])), np.flatnonzero(np.diff(seq)) + 1) if seq is not None
                  else [np.arange(i, min(i + 10, len(table["t"]))) for i in range(0, len(table["t"]), 10)])
        rate = self.entry.get("rate")
        for idx in groups:
            if len(idx) == 0:
                continue
            td = table["t_device"][idx] if "t_device" in table else None
            meta: dict[str, Any] = {"t": table["t"][idx].copy()}
            if rate:
                meta["rate"] = rate
            if td is not None and np.isfinite(td).all():
                meta["t_device"] = td.copy()
            t_dev0 = float(td[0]) if td is not None and np.isfinite(td[0]) else None
            yield float(table["t"][idx[0]]), table["rows"][idx].copy(), t_dev0, meta


def load_imu_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Read an IMU CSV (header with t, ax, ay, az, gx, gy, gz; optional t_device, seq)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        need = ["t", "ax", "ay", "az", "gx", "gy", "gz"]
        missing = [c for c in need if c not in header]
        if missing:
            raise StreamError(f"{path}: header must name t,ax,ay,az,gx,gy,gz; missing {missing} in {header}")
        cols = {c: header.index(c) for c in header}
        values = [[(float(r[i]) if i < len(r) and r[i] != "" else np.nan) for i in range(len(header))] for r in reader if r]
    arr = np.asarray(values, dtype=np.float64).reshape(-1, len(header))
    out = {"t": arr[:, cols["t"]], "rows": arr[:, [cols[c] for c in need[1:]]]}
    if "t_device" in cols:
        out["t_device"] = arr[:, cols["t_device"]]
    if "seq" in cols:
        out["seq"] = arr[:, cols["seq"]]
    return out


def open_folder(folder: str | Path, *, realtime: bool = False, speed: float = 1.0,
                streams: Sequence[str] | None = None, clock: ReplayClock | None = None) -> list[Source]:
    """One :class:`FolderStreamSource` per stream of a recording folder, sharing one clock."""
    from ..recording import load_index

    index = load_index(folder)
    names = list(index["streams"]) if streams is None else list(streams)
    unknown = [n for n in names if n not in index["streams"]]
    if unknown:
        raise StreamError(f"{folder}/recording.json: no stream(s) {unknown}; streams: {sorted(index['streams'])}")
    clock = clock or ReplayClock(realtime=realtime, speed=speed)
    return [FolderStreamSource(folder, n, index["streams"][n], clock=clock, realtime=realtime) for n in names]


def open_replay(path: str | Path, realtime: bool = False, *, speed: float = 1.0,
                streams: Sequence[str] | None = None, **bag_options: Any) -> list[Source]:
    """Sources replaying a recording folder, a rosbag2 folder or an ``.mcap``/``.db3`` file, sharing one clock.

    ``streams`` selects stream names (recording) or topics (bag). ``bag_options`` go to
    :func:`edgebind.runtime.sources.rosbag.open_bag` (``topics``, ``audio_rate``, ...).
    """
    p = Path(path)
    if not p.exists():
        raise StreamError(f"{p}: no such recording or bag")
    if p.is_dir() and (p / "recording.json").exists():
        if bag_options:
            raise StreamError(f"{p}: options {sorted(bag_options)} only apply to rosbag2/MCAP replay")
        return open_folder(p, realtime=realtime, speed=speed, streams=streams)
    if (p.is_dir() and (p / "metadata.yaml").exists()) or p.suffix in (".mcap", ".db3"):
        from .rosbag import open_bag

        topics = bag_options.pop("topics", None) or streams
        return open_bag(p, realtime=realtime, speed=speed, topics=topics, **bag_options)
    raise StreamError(f"{p}: neither a recording folder (recording.json) nor a rosbag2 bag (metadata.yaml, .mcap, .db3)")
