"""Serial IMU over a pseudo-terminal: garbage rejected with exact counts, disconnect, backoff, reconnect."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest

pytest.importorskip("serial", reason="pyserial (sensors extra) is needed for the serial IMU source")
pty = pytest.importorskip("pty", reason="pseudo-terminals need a POSIX system")
import tty  # noqa: E402

from edgebind.errors import ConfigError  # noqa: E402
from edgebind.preprocess.imu import ImuConfig, preprocess_timestamped  # noqa: E402
from edgebind.runtime.sources import RetryPolicy, SerialImuConfig, SerialImuSource  # noqa: E402
from edgebind.runtime.sources.serial_imu import LineParser  # noqa: E402
from helpers import wait_for  # noqa: E402



class Pty:
    def __init__(self):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation before pyserial configures the port
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def _line(i: int, dt: float = 0.005) -> bytes:
    return f"{i * dt:.6f},0.1,-0.2,9.80665,0.01,0.02,{0.001 * i:.6f}\n".encode()


GARBAGE = [
    b"\xff\xfe\x80\x81 binary noise\n",      # not ASCII
    b"1.0,2.0\n",                            # too few fields
    b"0.1,abc,0,9.8,0,0,0\n",                # not a number
    b"0.1,nan,0,9.8,0,0,0\n",                # NaN
    b"0.1,0,0,9.8,0,0,0,7,8\n",              # too many fields
    b"x" * 400 + b"\n",                      # over-long line (rejected once)
]


@pytest.fixture
def ptys():
    made = []

    def make():
        p = Pty()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_pty_garbage_disconnect_backoff_reconnect(ptys):
    first = ptys()
    port = {"path": first.path}
    samples = []
    src = SerialImuSource(
        SerialImuConfig(chunk_rows=1, stall_timeout_s=None),
        port=lambda: port["path"],
        retry=RetryPolicy(initial_s=0.02, max_s=0.1),
    )
    src.start(samples.append)
    try:
        wait_for(lambda: src.health().state == "ok", what="port open")
        # 20 valid lines with every kind of garbage interleaved, plus a comment and a blank line (ignored).
        # The comment goes before the last valid line: once 20 rows are in, every byte before it has been read,
        # so no partial line can be left for the disconnect below to reject (a race under CPU load otherwise).
        for i in range(20):
            if i == 19:
                first.write(b"# a comment line\n\n")
            first.write(_line(i))
            if i % 3 == 0:
                first.write(GARBAGE[(i // 3) % len(GARBAGE)])
        wait_for(lambda: src.health().samples == 20, what="20 rows")
        h = src.health()
        assert (h.samples, h.rejected, h.errors, h.reconnects) == (20, 7, 0, 0)

        # Mid-stream disconnect: the pty master goes away; the port path then does not exist for a while.
        first.close()
        port["path"] = "/nonexistent/tty-edgebind-test"
        wait_for(lambda: src.health().errors >= 3, what="failed reconnect attempts")
        assert src.health().state == "retrying"
        assert "nonexistent" in (src.health().last_error or "") or "disconnected" in (src.health().last_error or "")

        second = ptys()
        port["path"] = second.path
        wait_for(lambda: src.health().reconnects == 1 and src.health().state == "ok", what="reconnect")
        assert src.port_in_use == second.path
        for i in range(20, 60):
            second.write(_line(i))
        second.write(GARBAGE[0])
        wait_for(lambda: src.health().samples == 60 and src.health().rejected >= 8, what="rows and garbage after reconnect")
        h = src.health()
        assert h.rejected == 8 and h.reconnects == 1 and h.clock_jumps == 0
        assert h.errors >= 3  # the read failure plus at least two failed opens
    finally:
        src.stop(timeout=1.0)
    assert src.health().state == "stopped"

    rows = np.concatenate([s.data for s in samples])
    assert rows.shape == (60, 6) and rows.dtype == np.float64
    np.testing.assert_allclose(rows[:, 2], 9.80665)
    np.testing.assert_allclose(rows[:, 5], 0.001 * np.arange(60), atol=1e-9)
    t_dev = np.array([s.t_device for s in samples])
    np.testing.assert_allclose(t_dev, 0.005 * np.arange(60), atol=1e-9)
    assert [s.seq for s in samples] == list(range(60))
    # The IMU window recovers: host times are increasing and the window after reconnect preprocesses.
    t_host = np.concatenate([s.meta["t"] for s in samples])
    assert np.all(np.diff(t_host[20:]) > 0)
    window = preprocess_timestamped(t_host[20:], rows[20:], ImuConfig())
    assert np.isfinite(window).all()


def test_clock_jump_rejected_then_counts(ptys):
    p = ptys()
    samples = []
    src = SerialImuSource(SerialImuConfig(chunk_rows=1, stall_timeout_s=None), port=p.path,
                          retry=RetryPolicy(initial_s=0.02, max_s=0.1))
    src.start(samples.append)
    try:
        wait_for(lambda: src.health().state == "ok", what="port open")
        for i in range(5):
            p.write(_line(i))
        p.write(b"500.0,0,0,9.8,0,0,0\n")  # the device clock jumps 500 s ahead once
        for i in range(5, 10):
            p.write(_line(i))
        wait_for(lambda: src.health().samples == 10, what="rows")
        h = src.health()
        assert (h.clock_jumps, h.rejected) == (1, 1)
    finally:
        src.stop()


def test_units_and_column_map():
    cfg = SerialImuConfig(columns="_,gx,gy,gz,ax,ay,az,t", accel_unit="g", gyro_unit="deg/s", time_unit="ms", delimiter=";")
    t, row = LineParser(cfg).parse(b"id7;90;0;-180;0;0;1;1500\r")
    assert t == pytest.approx(1.5)
    np.testing.assert_allclose(row, [0, 0, 9.80665, math.pi / 2, 0, -math.pi])
    assert LineParser(cfg).parse(b"# comment") is None
    with pytest.raises(ValueError):
        LineParser(cfg).parse(b"1;2;3")
    with pytest.raises(ConfigError, match="missing"):
        SerialImuConfig(columns="t,ax,ay,az,gx,gy")


def test_stop_is_prompt_while_port_is_silent(ptys):
    p = ptys()
    src = SerialImuSource(SerialImuConfig(stall_timeout_s=None), port=p.path)
    src.start(lambda s: None)
    wait_for(lambda: src.health().state == "ok", what="port open")
    done = threading.Event()
    threading.Thread(target=lambda: (src.stop(timeout=1.0), done.set()), daemon=True).start()
    assert done.wait(2.0), "stop() did not return"
    assert src.health().state == "stopped"
