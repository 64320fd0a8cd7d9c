"""Recording folders: the writer (live samples -> files), the index, and the ``edgebind record`` loop.

A recording is a folder with ``recording.json`` and one set of files per stream (source name):

- vision: ``<name>.mp4`` (OpenCV VideoWriter, mp4v) + ``<name>.timestamps.csv``
- audio: ``<name>.wav`` (float32 or int16 via soundfile); the capture time of sample 0 is the stream's
  ``t0`` in the index. Gaps between chunks (dropped audio) are filled with zeros so that sample
  ``k`` was captured at ``t0 + k / rate``; ``padded_samples`` counts them.
- depth: ``<name>/000000.npy`` (float32 metres) + ``<name>.timestamps.csv``
- thermal: ``<name>/000000.png`` (16-bit for raw uint16, 8-bit for uint8) + ``<name>.timestamps.csv``
- imu: ``<name>.csv`` with the header ``t,ax,ay,az,gx,gy,gz,t_device,seq`` (t: monotonic seconds per
  row; t_device empty when the sensor gives none; seq: the live sample each row came in, so replay
  reproduces the original chunking).

``<name>.timestamps.csv`` has the header ``seq,t_capture,t_device``, one row per frame in file order.
Data files are written as samples arrive and flushed on :meth:`RecordingWriter.close`; the index
``recording.json`` (``schema_version``, ``created``, ``streams``: name -> ``{modality, kind, files,
rate, count, meta, ...}``) is written last and atomically, so a folder with an index is complete.
An mp4 is only playable after ``close()`` (the container is finalised there).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .._config import ConfigMixin
from .._io import atomic_write_json
from .._lazy import require
from ..errors import ConfigError, StreamError
from ..modality import Modality
from .sources.base import Sample, Source, SourceHealth, stop_all

logger = logging.getLogger(__name__)

INDEX_NAME = "recording.json"
SCHEMA_VERSION = 1
IMU_HEADER = ("t", "ax", "ay", "az", "gx", "gy", "gz", "t_device", "seq")
TIMESTAMPS_HEADER = ("seq", "t_capture", "t_device")


def _fmt(t: Optional[float]) -> str:
    return "" if t is None else repr(float(t))


class _Stream:
    """Base of one stream's writer. ``write`` is called under the stream's lock."""

    kind = ""

    def __init__(self, folder: Path, name: str, modality: Modality, rate: Optional[float]):
        self.folder, self.name, self.modality, self.rate = folder, name, modality, rate
        self.count = 0
        self.skipped = 0
        self.meta: dict[str, Any] = {}
        self.files: dict[str, str] = {}
        self.lock = threading.Lock()
        self._ts = None

    def _timestamps(self, sample: Sample) -> None:
        if self._ts is None:
            self.files["timestamps"] = f"{self.name}.timestamps.csv"
            self._ts = open(self.folder / self.files["timestamps"], "w", encoding="utf-8", newline="")
            self._ts.write(",".join(TIMESTAMPS_HEADER) + "\n")
        self._ts.write(f"{sample.seq},{_fmt(sample.t_capture)},{_fmt(sample.t_device)}\n")

    def write(self, sample: Sample) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._ts is not None:
            self._ts.close()
            self._ts = None

    def entry(self) -> dict[str, Any]:
        return {
            "modality": self.modality.value,
            "kind": self.kind,
            "files": dict(self.files),
            "rate": self.rate,
            "count": self.count,
            "skipped": self.skipped,
            "meta": _jsonable(self.meta),
        }


def _jsonable(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, np.generic):
            out[k] = v.item()
    return out


class _VideoStream(_Stream):
    kind = "video"

    def __init__(self, *args: Any, fourcc: str = "mp4v"):
        super().__init__(*args)
        self._fourcc = fourcc
        self._writer = None
        self._size: Optional[tuple[int, int]] = None

    def write(self, sample: Sample) -> None:
        cv2 = require("cv2", extra="sensors", purpose="recording video")
        frame = sample.data
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            self.skipped += 1
            return
        h, w = frame.shape[:2]
        if self._writer is None:
            self.files["data"] = f"{self.name}.mp4"
            fps = float(self.rate or 30.0)
            self._writer = cv2.VideoWriter(str(self.folder / self.files["data"]), cv2.VideoWriter_fourcc(*self._fourcc), fps, (w, h))
            if not self._writer.isOpened():
                raise StreamError(f"{self.folder / self.files['data']}: OpenCV could not open a {self._fourcc} video writer")
            self._size = (w, h)
            self.meta.update({"width": w, "height": h, "fourcc": self._fourcc})
        if (w, h) != self._size:
            self.skipped += 1
            return
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self._timestamps(sample)
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        super().close()


class _WavStream(_Stream):
    kind = "wav"

    def __init__(self, *args: Any, subtype: str = "FLOAT"):
        super().__init__(*args)
        self._subtype = subtype
        self._file = None
        self._channels = 0
        self._next_t: Optional[float] = None
        self.padded = 0
        self._written = 0

    def write(self, sample: Sample) -> None:
        sf = require("soundfile", extra="sensors", purpose="recording audio")
        x = np.asarray(sample.data, dtype=np.float32)
        x = x[:, None] if x.ndim == 1 else x
        rate = int(sample.meta.get("rate", self.rate or 16000))
        if self._file is None:
            self.rate, self._channels = rate, x.shape[1]
            self.files["data"] = f"{self.name}.wav"
            self._file = sf.SoundFile(str(self.folder / self.files["data"]), "w", samplerate=rate, channels=self._channels, subtype=self._subtype)
            self.meta["t0"] = sample.t_capture
            self.meta["channels"] = self._channels
            self._next_t = sample.t_capture
        if rate != self.rate or x.shape[1] != self._channels:
            self.skipped += 1
            return
        gap = int(round((sample.t_capture - float(self._next_t)) * rate))
        if 0.05 * rate <= gap <= 60 * rate:  # a real gap (dropped chunks), not jitter
            self._file.write(np.zeros((gap, self._channels), dtype=np.float32))
            self.padded += gap
            self._written += gap
        self._file.write(np.clip(x, -1.0, 1.0) if self._subtype != "FLOAT" else x)
        self.count += 1
        self._written += len(x)
        self._next_t = float(self.meta["t0"]) + self._written / rate

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.meta["padded_samples"] = self.padded
        self.meta["samples"] = self._written
        super().close()


class _FrameStream(_Stream):
    kind = "frames"

    def write(self, sample: Sample) -> None:
        d = self.folder / self.name
        if not self.files:
            d.mkdir(parents=True, exist_ok=True)
            self.files["dir"] = self.name
            self.meta.update(_jsonable(sample.meta))
        frame = sample.data
        if self.modality is Modality.DEPTH:
            if frame.ndim != 2:
                self.skipped += 1
                return
            self.meta["format"] = "npy"
            np.save(d / f"{self.count:06d}.npy", np.asarray(frame, dtype=np.float32), allow_pickle=False)
        else:
            cv2 = require("cv2", extra="sensors", purpose="recording thermal frames")
            if frame.ndim != 2 or frame.dtype not in (np.uint8, np.uint16):
                self.skipped += 1
                return
            self.meta["format"] = "png16" if frame.dtype == np.uint16 else "png8"
            if not cv2.imwrite(str(d / f"{self.count:06d}.png"), frame):
                raise StreamError(f"{d / f'{self.count:06d}.png'}: OpenCV could not write the frame")
        self._timestamps(sample)
        self.count += 1


class _ImuStream(_Stream):
    kind = "csv"

    def __init__(self, *args: Any):
        super().__init__(*args)
        self._fh = None
        self.rows = 0

    def write(self, sample: Sample) -> None:
        rows = np.asarray(sample.data, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != 6:
            self.skipped += 1
            return
        if self._fh is None:
            self.files["data"] = f"{self.name}.csv"
            self._fh = open(self.folder / self.files["data"], "w", encoding="utf-8", newline="")
            self._fh.write(",".join(IMU_HEADER) + "\n")
        n = len(rows)
        t = np.asarray(sample.meta.get("t", np.full(n, sample.t_capture)), dtype=np.float64).reshape(-1)
        td = sample.meta.get("t_device")
        td_rows = np.asarray(td, dtype=np.float64).reshape(-1) if td is not None else None
        if len(t) != n or (td_rows is not None and len(td_rows) != n):
            self.skipped += 1
            return
        for i in range(n):
            vals = ",".join(repr(float(v)) for v in rows[i])
            tdev = _fmt(td_rows[i]) if td_rows is not None else (_fmt(sample.t_device) if i == 0 else "")
            self._fh.write(f"{float(t[i])!r},{vals},{tdev},{sample.seq}\n")
        self.rows += n
        self.count += 1
        if "rate" in sample.meta:
            self.rate = float(sample.meta["rate"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.meta["rows"] = self.rows
        super().close()


class RecordingWriter:
    """Writes samples from any number of sources into a recording folder (thread-safe).

    Use ``writer.write`` (or ``writer.sink``) as a source's sink, then ``close()`` (or use it as a
    context manager). Streams are created on their first sample, named by ``sample.source``.
    """

    def __init__(self, folder: str | Path, *, overwrite: bool = False, audio_subtype: str = "FLOAT", video_fourcc: str = "mp4v"):
        self.folder = Path(folder)
        if (self.folder / INDEX_NAME).exists() and not overwrite:
            raise ConfigError(f"{self.folder}: already holds a recording ({INDEX_NAME}); pass overwrite=True or pick another folder")
        if audio_subtype not in ("FLOAT", "PCM_16"):
            raise ConfigError(f"audio_subtype: expected 'FLOAT' or 'PCM_16', got {audio_subtype!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._audio_subtype, self._fourcc = audio_subtype, video_fourcc
        self._streams: dict[str, _Stream] = {}
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.errors = 0
        self.late = 0
        self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def set_rate(self, name: str, rate: float) -> None:
        """Nominal frame rate of a camera stream (the mp4 header needs one; timestamps are the truth)."""
        self._rates[name] = float(rate)

    def _stream(self, sample: Sample) -> Optional[_Stream]:
        with self._lock:
            if self._closed:
                self.late += 1  # a source thread that outlived stop(); the files are final
                return None
            s = self._streams.get(sample.source)
            if s is None:
                args = (self.folder, sample.source, sample.modality, self._rates.get(sample.source))
                m = sample.modality
                if m is Modality.VISION:
                    s = _VideoStream(*args, fourcc=self._fourcc)
                elif m is Modality.AUDIO:
                    s = _WavStream(*args, subtype=self._audio_subtype)
                elif m in (Modality.DEPTH, Modality.THERMAL):
                    s = _FrameStream(*args)
                elif m is Modality.IMU:
                    s = _ImuStream(*args)
                else:
                    raise StreamError(f"cannot record modality {m.value!r} (source {sample.source!r})")
                self._streams[sample.source] = s
            return s

    def write(self, sample: Sample) -> None:
        stream = self._stream(sample)
        if stream is None:
            return
        with stream.lock:
            if not self._closed:
                stream.write(sample)

    sink = write

    def close(self, health: Sequence[SourceHealth] = ()) -> Path:
        """Flush every stream and write the index (last, atomically). Idempotent; returns the index path."""
        with self._lock:
            if self._closed:
                return self.folder / INDEX_NAME
            self._closed = True
            streams = dict(self._streams)
        for s in streams.values():
            with s.lock:
                try:
                    s.close()
                except Exception:  # noqa: BLE001 - flush the others
                    self.errors += 1
                    logger.exception("%s: closing stream %r failed", self.folder, s.name)
        index = {
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "streams": {name: s.entry() for name, s in streams.items()},
            "health": {h.name: h.to_dict() for h in health},
        }
        atomic_write_json(self.folder / INDEX_NAME, index)
        logger.info("recording written to %s (%d streams)", self.folder, len(streams))
        return self.folder / INDEX_NAME

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_index(folder: str | Path) -> dict[str, Any]:
    """Read and check ``recording.json``; raises StreamError naming the file and field at fault."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise StreamError(f"{path}: not found; a recording folder needs its index (an interrupted recording has none)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StreamError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("schema_version") != SCHEMA_VERSION:
        raise StreamError(f"{path}: schema_version: expected {SCHEMA_VERSION}, got {index.get('schema_version') if isinstance(index, dict) else index!r}")
    streams = index.get("streams")
    if not isinstance(streams, dict):
        raise StreamError(f"{path}: streams: expected an object of name -> stream")
    for name, s in streams.items():
        for key in ("modality", "kind", "files"):
            if key not in s:
                raise StreamError(f"{path}: streams.{name}.{key}: missing")
        Modality.parse(s["modality"])
    return index


@dataclasses.dataclass(frozen=True)
class RecordConfig(ConfigMixin):
    out: str = "recording"
    sources: tuple[str, ...] = ()
    """Source specs, see :func:`edgebind.runtime.sources.open_source` (e.g. ``front=camera:0``)."""
    duration_s: Optional[float] = None
    """Stop after this many seconds; None: until Ctrl-C (or every source finished)."""
    overwrite: bool = False
    audio_subtype: str = "FLOAT"
    stop_timeout_s: float = 1.0


def _on_sigterm(stop: threading.Event, terminated: threading.Event) -> Optional[Callable[[], None]]:
    """Make SIGTERM set ``stop`` (main thread only); returns a function restoring the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        logger.info("SIGTERM: stopping the recording")
        terminated.set()
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass(frozen=True)
class RecordResult:
    folder: str
    seconds: float
    interrupted: bool
    streams: dict[str, Any]
    health: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def record(
    config: RecordConfig,
    *,
    sources: Sequence[Source] | None = None,
    stop: Optional[threading.Event] = None,
    on_status: Optional[Callable[[list[SourceHealth]], None]] = None,
    handle_sigterm: bool = True,
) -> RecordResult:
    """Record live sources into ``config.out`` until the duration, ``stop``, Ctrl-C or all finished.

    Ctrl-C (KeyboardInterrupt) stops every source within ``stop_timeout_s`` and still writes a
    complete recording; the result says ``interrupted=True``. With ``handle_sigterm`` (and when
    called from the main thread) SIGTERM, as sent by systemd or ``docker stop``, ends the recording
    the same way.
    """
    if sources is None:
        from .sources import open_source

        if not config.sources:
            raise ConfigError("record: no sources given; expected one or more specs such as 'camera:0' or 'imu:/dev/ttyUSB0'")
        sources = [open_source(spec) for spec in config.sources]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"record: source names must be unique, got {names}; name them with 'name=kind:target'")
    writer = RecordingWriter(config.out, overwrite=config.overwrite, audio_subtype=config.audio_subtype)
    for s in sources:
        rate = getattr(getattr(s, "config", None), "fps", None) or getattr(getattr(s, "config", None), "rate_hz", None)
        if s.modality is Modality.VISION and rate:
            writer.set_rate(s.name, float(rate))
    stop = stop or threading.Event()
    t0 = time.monotonic()
    interrupted = False
    terminated = threading.Event()
    restore = _on_sigterm(stop, terminated) if handle_sigterm else None
    try:
        for s in sources:
            s.start(writer.write)
        next_status = t0 + 5.0
        while not stop.is_set():
            now = time.monotonic()
            if config.duration_s is not None and now - t0 >= config.duration_s:
                break
            if all(s.health().state in ("finished", "failed") for s in sources):
                break
            if on_status is not None and now >= next_status:
                on_status([s.health() for s in sources])
                next_status = now + 5.0
            stop.wait(0.05)
    except KeyboardInterrupt:
        interrupted = True
        logger.info("interrupted: stopping %d source(s) and flushing %s", len(sources), config.out)
    finally:
        stop_all(sources, config.stop_timeout_s)
        health = [s.health() for s in sources]
        writer.close(health)
        if restore is not None:
            restore()
    index = load_index(config.out)
    return RecordResult(
        folder=str(config.out),
        seconds=round(time.monotonic() - t0, 3),
        interrupted=interrupted or terminated.is_set(),
        streams=index["streams"],
        health={h.name: h.to_dict() for h in health},
    )
