"""Real sensors (run with ``pytest -m hardware``): camera, microphone, RealSense, serial IMU.

Each test skips with the reason when its device or library is absent. Optional environment:
``EDGEBIND_TEST_CAMERA`` (OpenCV target, default 0), ``EDGEBIND_TEST_THERMAL`` (target of a Y16 UVC
thermal camera), ``EDGEBIND_TEST_IMU_PORT`` (serial port of an IMU printing t,ax,ay,az,gx,gy,gz lines).
"""

from __future__ import annotations

import glob
import os
import time

import numpy as np
import pytest

from edgebind.modality import Modality
from edgebind.runtime.sources import (
    CameraConfig,
    CameraSource,
    DepthCameraConfig,
    DepthSource,
    MicrophoneConfig,
    MicrophoneSource,
    SerialImuConfig,
    SerialImuSource,
    ThermalCameraConfig,
    ThermalSource,
)

pytestmark = pytest.mark.hardware


def _collect(src, n, timeout=10.0):
    got = []
    src.start(got.append)
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        src.stop(timeout=1.0)
    assert len(got) >= n, f"{src.name}: {len(got)} samples in {timeout} s; health {src.health()}"
    return got


def test_real_camera():
    cv2 = pytest.importorskip("cv2", reason="OpenCV (sensors extra) is not installed")
    target = os.environ.get("EDGEBIND_TEST_CAMERA", "0")
    if target.isdigit() and not glob.glob("/dev/video*"):
        pytest.skip("no camera attached (no /dev/video* device); set EDGEBIND_TEST_CAMERA for a URL or pipeline")
    cap = cv2.VideoCapture(int(target) if target.isdigit() else target)
    opened = cap.isOpened()
    cap.release()
    if not opened:
        pytest.skip(f"OpenCV cannot open camera {target!r}")
    got = _collect(CameraSource(CameraConfig(target=target)), 10)
    assert all(s.modality is Modality.VISION and s.data.dtype == np.uint8 and s.data.shape[2] == 3 for s in got)
    assert [s.seq for s in got[:10]] == list(range(10))


def test_real_thermal_camera():
    pytest.importorskip("cv2", reason="OpenCV (sensors extra) is not installed")
    target = os.environ.get("EDGEBIND_TEST_THERMAL")
    if not target:
        pytest.skip("no thermal camera configured; set EDGEBIND_TEST_THERMAL to its OpenCV target (e.g. /dev/video2)")
    got = _collect(ThermalSource(ThermalCameraConfig(target=target)), 5, timeout=15.0)
    assert all(s.data.ndim == 2 and s.meta["format"] in ("y16", "u8") for s in got)


def test_real_microphone():
    sd = pytest.importorskip("sounddevice", reason="sounddevice (sensors extra) is not installed")
    try:
        inputs = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
    except Exception as exc:  # noqa: BLE001 - PortAudio missing or broken
        pytest.skip(f"PortAudio cannot list devices: {exc}")
    if not inputs:
        pytest.skip("no audio input device attached")
    got = _collect(MicrophoneSource(MicrophoneConfig(chunk_s=0.1)), 10)
    assert all(s.meta["rate"] == 16000 and s.data.dtype == np.float32 for s in got)
    assert sum(len(s.data) for s in got) >= 0.8 * 16000 * 0.1 * 10


def test_real_realsense():
    rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 is not installed")
    if len(rs.context().query_devices()) == 0:
        pytest.skip("no Intel RealSense device attached")
    got = _collect(DepthSource(DepthCameraConfig(backend="realsense")), 10)
    for s in got:
        assert s.data.dtype == np.float32 and s.data.ndim == 2 and s.data.min() >= 0
        assert s.meta["fx"] > 0 and s.t_device is not None
    assert np.median(got[-1].data[got[-1].data > 0]) < 20.0  # metres, not millimetres


def test_real_serial_imu():
    pytest.importorskip("serial", reason="pyserial (sensors extra) is not installed")
    port = os.environ.get("EDGEBIND_TEST_IMU_PORT")
    if not port:
        pytest.skip("no serial IMU configured; set EDGEBIND_TEST_IMU_PORT (e.g. /dev/ttyUSB0)")
    got = _collect(SerialImuSource(SerialImuConfig(port=port)), 5)
    rows = np.concatenate([s.data for s in got])
    assert rows.shape[1] == 6 and np.isfinite(rows).all()
    assert 5.0 < np.median(np.linalg.norm(rows[:, :3], axis=1)) < 15.0  # gravity in m/s^2
