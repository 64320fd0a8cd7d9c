"""IMU over a serial port (pyserial): one text line per reading, CSV by default.

Line protocol. Each line holds ``len(columns)`` fields separated by ``delimiter``; ``columns`` names
them in order: ``t`` (device timestamp, optional), ``ax ay az`` (accelerometer), ``gx gy gz``
(gyroscope) and ``_`` for fields to ignore. The default is ``t,ax,ay,az,gx,gy,gz``; a board printing
``ax,ay,az,gx,gy,gz`` uses ``columns="ax,ay,az,gx,gy,gz"``. Units are converted to the contract's
m/s^2 and rad/s (``accel_unit`` m/s2 | g | mg, ``gyro_unit`` rad/s | deg/s | mrad/s, ``time_unit``
s | ms | us | ns). Empty lines and lines starting with ``#`` are ignored (not counted).

Rejected and counted in ``health().rejected`` (never fatal): lines that are not ASCII, longer than
``max_line_bytes``, have the wrong number of fields, hold a non-number or NaN/inf, and rows whose
device timestamp jumps (also counted in ``clock_jumps``, see :class:`~.base.ClockGuard`). A partial
line left when the port drops is rejected too; the first line after (re)connecting is often partial
and is rejected like any garbage.

Times. ``meta["t"]`` (monotonic seconds per row): with a ``t`` column, device time is mapped to the
host clock with ``offset = min(arrival - t_device)`` over the rows seen since (re)connecting (the
least-delayed line best estimates the offset); without one, a row's arrival time is used. Row
times are kept strictly increasing (a row that would map at or before its predecessor gets the
predecessor's time + 1 us), as the IMU preprocessing requires. The
source emits chunks of up to ``chunk_rows`` rows, or fewer after ``max_latency_s``.

Faults. A read error (device unplugged; a pty whose master closed) or no bytes for
``stall_timeout_s`` raises inside the loop: the port is closed and reopened with backoff. ``port`` may
be a callable returning the path, re-evaluated on every (re)connect (e.g. a udev symlink resolver, or
a test swapping ptys).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Literal, Optional, Union

import numpy as np

from ..._config import ConfigMixin
from ..._lazy import require
from ...errors import ConfigError, StreamError
from ...modality import Modality
from .base import ClockConfig, RetryPolicy, StreamSource

_ACCEL = {"m/s2": 1.0, "g": 9.80665, "mg": 9.80665e-3}
_GYRO = {"rad/s": 1.0, "deg/s": math.pi / 180.0, "mrad/s": 1e-3}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_AXES = ("ax", "ay", "az", "gx", "gy", "gz")


@dataclasses.dataclass(frozen=True)
class SerialImuConfig(ConfigMixin):
    port: str = "/dev/ttyUSB0"
    baudrate: int = 115200
    columns: str = "t,ax,ay,az,gx,gy,gz"
    delimiter: str = ","
    accel_unit: Literal["m/s2", "g", "mg"] = "m/s2"
    gyro_unit: Literal["rad/s", "deg/s", "mrad/s"] = "rad/s"
    time_unit: Literal["s", "ms", "us", "ns"] = "s"
    rate_hz: float = 200.0
    """Nominal output rate of the board (recorded in meta; the pipeline resamples by timestamps)."""
    chunk_rows: int = 10
    max_latency_s: float = 0.05
    max_line_bytes: int = 256
    read_timeout_s: float = 0.05
    stall_timeout_s: Optional[float] = 2.0
    """No bytes for this long counts as a disconnect (None: wait forever)."""

    def __post_init__(self) -> None:
        names = self.column_names
        missing = [a for a in _AXES if a not in names]
        dup = sorted({n for n in names if n != "_" and names.count(n) > 1})
        bad = sorted({n for n in names if n not in _AXES and n not in ("t", "_")})
        if missing or dup or bad:
            raise ConfigError(
                f"SerialImuConfig.columns: expected names from t,ax,ay,az,gx,gy,gz,_ covering all six axes once; "
                f"got {self.columns!r} (missing {missing}, duplicated {dup}, unknown {bad})"
            )
        if len(self.delimiter) != 1:
            raise ConfigError(f"SerialImuConfig.delimiter: expected one character, got {self.delimiter!r}")
        if self.chunk_rows < 1 or not self.rate_hz > 0 or self.max_line_bytes < 8:
            raise ConfigError(
                f"SerialImuConfig: expected chunk_rows >= 1, rate_hz > 0, max_line_bytes >= 8; got "
                f"{self.chunk_rows!r}, {self.rate_hz!r}, {self.max_line_bytes!r}"
            )

    @property
    def column_names(self) -> list[str]:
        return [c.strip() for c in self.columns.split(",")]


class LineParser:
    """Parses one line into (t_device or None, row[6] in SI units); raises ValueError for garbage."""

    def __init__(self, config: SerialImuConfig):
        self.config = config
        names = config.column_names
        self.n_fields = len(names)
        self.t_index = names.index("t") if "t" in names else None
        self.axis_index = [names.index(a) for a in _AXES]
        self.scale = np.array([_ACCEL[config.accel_unit]] * 3 + [_GYRO[config.gyro_unit]] * 3)
        self.t_scale = _TIME[config.time_unit]

    def parse(self, raw: bytes) -> Optional[tuple[Optional[float], np.ndarray]]:
        """None for lines to ignore (blank, comment); ValueError for garbage."""
        if len(raw) > self.config.max_line_bytes:
            raise ValueError(f"line longer than {self.config.max_line_bytes} bytes")
        text = raw.decode("ascii").strip()  # UnicodeDecodeError is a ValueError
        if not text or text.startswith("#"):
            return None
        fields = text.split(self.config.delimiter)
        if len(fields) != self.n_fields:
            raise ValueError(f"expected {self.n_fields} fields, got {len(fields)}")
        row = np.array([float(fields[i]) for i in self.axis_index], dtype=np.float64)
        t = float(fields[self.t_index]) * self.t_scale if self.t_index is not None else None
        if not np.isfinite(row).all() or (t is not None and not math.isfinite(t)):
            raise ValueError("NaN or inf value")
        return t, row * self.scale


class SerialImuSource(StreamSource):
    """IMU rows from a serial line protocol (see the module docstring)."""

    def __init__(
        self,
        config: SerialImuConfig | None = None,
        *,
        port: Union[str, Callable[[], str], None] = None,
        name: str = "imu",
        retry: RetryPolicy | None = None,
        clock: ClockConfig | None = None,
    ):
        self.config = config or SerialImuConfig()
        super().__init__(name, Modality.IMU, retry=retry, clock=clock or ClockConfig(max_jump_s=1.0))
        self._port_spec = port if port is not None else self.config.port
        self._parser = LineParser(self.config)
        self._serial = None
        self._buf = bytearray()
        self._discarding = False
        self._rows: list[np.ndarray] = []
        self._t_rows: list[float] = []
        self._td_rows: list[Optional[float]] = []
        self._offset: Optional[float] = None
        self._last_host: Optional[float] = None
        self._last_bytes = 0.0
        self.lines = 0
        """Lines parsed into rows (accepted or rejected for their timestamp)."""
        self.port_in_use: Optional[str] = None

    def _resolve_port(self) -> str:
        spec = self._port_spec
        return str(spec() if callable(spec) else spec)

    def _open(self) -> None:
        serial = require("serial", extra="sensors", purpose="serial IMU input")
        port = self._resolve_port()
        self._serial = serial.Serial(port, self.config.baudrate, timeout=self.config.read_timeout_s)
        self.port_in_use = port
        self._buf.clear()
        self._discarding = False
        self._offset = None
        self._last_bytes = time.monotonic()

    def _close(self) -> None:
        self._flush()
        if self._buf.strip() and not self._discarding:
            self._reject("partial line at disconnect")
        self._buf.clear()
        ser, self._serial = self._serial, None
        if ser is not None:
            ser.close()

    def _interrupt(self) -> None:
        ser = self._serial
        if ser is not None and hasattr(ser, "cancel_read"):
            ser.cancel_read()

    def _read(self) -> None:
        ser = self._serial
        if ser is None:
            raise StreamError(f"{self.port_in_use}: serial port is not open")
        chunk = ser.read(max(1, ser.in_waiting))
        now = time.monotonic()
        if chunk:
            self._last_bytes = now
            self._feed(chunk, now)
        elif self.config.stall_timeout_s is not None and now - self._last_bytes > self.config.stall_timeout_s:
            raise StreamError(f"{self.port_in_use}: no data for {self.config.stall_timeout_s:.1f} s")
        if self._rows and (len(self._rows) >= self.config.chunk_rows or now - self._t_rows[0] >= self.config.max_latency_s):
            self._flush()

    def _feed(self, chunk: bytes, now: float) -> None:
        self._buf += chunk
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.config.max_line_bytes and not self._discarding:
                    # A run of garbage without newline: reject it once, drop bytes until the next newline.
                    self._reject("over-long line without newline")
                    self._discarding = True
                if self._discarding:
                    self._buf.clear()
                return
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._discarding:
                self._discarding = False  # the newline ending the rejected over-long line
                continue
            self._line(raw, now)

    def _line(self, raw: bytes, now: float) -> None:
        try:
            parsed = self._parser.parse(raw)
        except ValueError as exc:
            self._reject(f"malformed line {raw[:40]!r}: {exc}")
            return
        if parsed is None:
            return
        self.lines += 1
        t_dev, row = parsed
        jumps = self._guard.jumps
        if not self._check_clock(t_dev):
            return
        if self._guard.jumps != jumps:
            self._offset = None  # a new device timeline was adopted (resync / rebase)
        if t_dev is not None:
            offset = now - t_dev
            if self._offset is None or offset < self._offset:
                self._offset = offset
            t_host = t_dev + self._offset
        else:
            t_host = now
        # A better (smaller) offset can move the mapped time back a little; rows stay strictly increasing.
        if self._last_host is not None and t_host <= self._last_host:
            t_host = self._last_host + 1e-6
        self._last_host = t_host
        self._rows.append(row)
        self._t_rows.append(t_host)
        self._td_rows.append(t_dev)
        if len(self._rows) >= self.config.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        rows = np.stack(self._rows)
        meta = {"t": np.asarray(self._t_rows, dtype=np.float64), "rate": self.config.rate_hz}
        t_dev0 = self._td_rows[0]
        if t_dev0 is not None:
            meta["t_device"] = np.asarray(self._td_rows, dtype=np.float64)
        self._rows, self._t_rows, self._td_rows = [], [], []
        self._emit(rows, t_capture=float(meta["t"][0]), t_device=t_dev0, meta=meta, check_clock=False)
