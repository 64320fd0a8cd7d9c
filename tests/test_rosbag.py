"""rosbag2 / MCAP replay from bags written here with the rosbags library."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags (sensors extra) reads rosbag2/MCAP bags")
cv2 = pytest.importorskip("cv2", reason="OpenCV (sensors extra) decodes CompressedImage messages")

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402

from edgebind.errors import StreamError  # noqa: E402
from edgebind.modality import Modality  # noqa: E402
from edgebind.runtime.sources import open_replay  # noqa: E402
from edgebind.runtime.sources.rosbag import AUDIO_DATA, list_topics, make_typestore  # noqa: E402

N = 4
T0 = 1_700_000_000_000_000_000  # bag receive time of the first message, ns


def _header(ts, i, offset_ns=0):
    t = T0 + i * 100_000_000 + offset_ns - 5_000_000  # header stamp 5 ms before receipt
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    return Header(stamp=Time(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000), frame_id="sensor")


def _image(ts, i, enc, arr, offset):
    Image = ts.types["sensor_msgs/msg/Image"]
    h, w = arr.shape[:2]
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(h, -1)
    pad = np.zeros((h, 4), np.uint8)  # rows padded beyond width: step > width * bytes
    raw = np.hstack([raw, pad])
    return Image(header=_header(ts, i, offset), height=h, width=w, encoding=enc, is_bigendian=0, step=raw.shape[1],
                 data=raw.reshape(-1))


def _frames(i):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 10 * i, 200
    depth = np.full((6, 8), 1.0 + i, np.float32)
    depth[0, 0], depth[0, 1] = np.nan, np.inf
    thermal = (np.arange(48, dtype=np.uint16).reshape(6, 8) + 29000 + i)
    return rgb, depth, thermal


def _write_bag(path, plugin):
    ts = make_typestore()
    Imu, Vec, Quat = (ts.types[k] for k in ("sensor_msgs/msg/Imu", "geometry_msgs/msg/Vector3", "geometry_msgs/msg/Quaternion"))
    Comp, Audio = ts.types["sensor_msgs/msg/CompressedImage"], ts.types[AUDIO_DATA]
    F32, Layout, Dim = (ts.types[k] for k in ("std_msgs/msg/Float32MultiArray", "std_msgs/msg/MultiArrayLayout",
                                               "std_msgs/msg/MultiArrayDimension"))
    with Writer(path, version=8, storage_plugin=plugin) as w:
        conns = {topic: w.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in [
            ("/camera/image_raw", "sensor_msgs/msg/Image"), ("/camera/image/compressed", "sensor_msgs/msg/CompressedImage"),
            ("/camera/depth/image_rect", "sensor_msgs/msg/Image"), ("/thermal/image_raw", "sensor_msgs/msg/Image"),
            ("/imu/data", "sensor_msgs/msg/Imu"), ("/audio/audio", AUDIO_DATA), ("/audio/f32", "std_msgs/msg/Float32MultiArray"),
            ("/rosout_like", "std_msgs/msg/String")]}

        def put(topic, i, offset_ns, msg):
            w.write(conns[topic], T0 + i * 100_000_000 + offset_ns, ts.serialize_cdr(msg, conns[topic].msgtype))

        for i in range(N):
            rgb, depth, thermal = _frames(i)
            put("/camera/image_raw", i, 0, _image(ts, i, "bgr8", rgb[..., ::-1], 0))
            ok, jpg = cv2.imencode(".png", rgb[..., ::-1])
            put("/camera/image/compressed", i, 1_000_000, Comp(header=_header(ts, i, 1_000_000), format="bgr8; png compressed bgr8",
                                                             data=np.frombuffer(jpg.tobytes(), np.uint8)))
            put("/camera/depth/image_rect", i, 2_000_000, _image(ts, i, "32FC1", depth, 2_000_000))
            put("/thermal/image_raw", i, 3_000_000, _image(ts, i, "mono16", thermal, 3_000_000))
            cov = np.zeros(9)
            put("/imu/data", i, 4_000_000, Imu(header=_header(ts, i, 4_000_000), orientation=Quat(x=0.0, y=0.0, z=0.0, w=1.0),
                                               orientation_covariance=cov, angular_velocity=Vec(x=0.1 * i, y=0.0, z=-0.5),
                                               angular_velocity_covariance=cov, linear_acceleration=Vec(x=0.0, y=0.2, z=9.81),
                                               linear_acceleration_covariance=cov))
            pcm = (np.arange(160, dtype=np.int16) * 100 + i).astype("<i2")
            put("/audio/audio", i, 5_000_000, Audio(data=np.frombuffer(pcm.tobytes(), np.uint8)))
            stereo = np.stack([np.full(80, 0.25 * i), np.full(80, -0.5)], axis=1).astype(np.float32)
            put("/audio/f32", i, 6_000_000, F32(layout=Layout(dim=[Dim(label="frames", size=80, stride=160),
                                                                   Dim(label="channels", size=2, stride=2)], data_offset=0),
                                                data=stereo.reshape(-1)))
        bad = _image(ts, N, "rgb8", np.zeros((6, 8, 3), np.uint8), 0)
        bad.data = bad.data[:10]  # truncated image data: rejected on replay, not fatal
        put("/camera/image_raw", N, 0, bad)


@pytest.fixture(scope="module", params=[StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=["mcap", "sqlite3"])
def bag(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / f"bag_{request.param.name.lower()}"
    _write_bag(path, request.param)
    return path


def _replay(path, **kw):
    sources = open_replay(path, **kw)
    got = []
    for s in sources:
        s.start(got.append)
    deadline = time.monotonic() + 20
    while not all(s.health().state == "finished" for s in sources):
        assert time.monotonic() < deadline, [s.health() for s in sources]
        time.sleep(0.01)
    for s in sources:
        s.stop()
    return sources, got


def test_bag_replay_converts_every_supported_message(bag):
    assert list_topics(bag)["/audio/audio"] == AUDIO_DATA
    sources, got = _replay(bag, audio_rate=8000)
    modality = {s.name: s.modality for s in sources}
    assert modality == {"camera_image_raw": Modality.VISION, "camera_image_compressed": Modality.VISION,
                        "camera_depth_image_rect": Modality.DEPTH, "thermal_image_raw": Modality.THERMAL,
                        "imu_data": Modality.IMU, "audio_audio": Modality.AUDIO, "audio_f32": Modality.AUDIO}
    times = [s.t_capture for s in got]
    assert times == sorted(times) and len(got) == 7 * N
    by = {name: [s for s in got if s.source == name] for name in modality}
    for i in range(N):
        rgb, depth, thermal = _frames(i)
        np.testing.assert_array_equal(by["camera_image_raw"][i].data, rgb)
        np.testing.assert_array_equal(by["camera_image_compressed"][i].data, rgb)
        d = by["camera_depth_image_rect"][i].data
        assert d.dtype == np.float32 and d[0, 0] == 0 and d[0, 1] == 0 and d[3, 3] == pytest.approx(1.0 + i)
        np.testing.assert_array_equal(by["thermal_image_raw"][i].data, thermal)
        assert by["thermal_image_raw"][i].meta["format"] == "y16"
        imu = by["imu_data"][i]
        np.testing.assert_allclose(imu.data, [[0.0, 0.2, 9.81, 0.1 * i, 0.0, -0.5]])
        assert imu.meta["t"][0] == imu.t_capture
        pcm = by["audio_audio"][i]
        assert pcm.meta["rate"] == 8000 and pcm.data.dtype == np.float32
        np.testing.assert_allclose(pcm.data, (np.arange(160) * 100 + i) / 32768.0, rtol=1e-6)
        f32 = by["audio_f32"][i]
        assert f32.data.shape == (80, 2) and f32.data[0, 0] == pytest.approx(0.25 * i) and f32.data[0, 1] == -0.5
    cam = by["camera_image_raw"][1]
    assert cam.t_capture == pytest.approx(T0 * 1e-9 + 0.1)
    assert cam.t_device == pytest.approx(T0 * 1e-9 + 0.1 - 0.005)
    raw_src = next(s for s in sources if s.name == "camera_image_raw")
    assert raw_src.health().rejected == 1  # the truncated image
    assert by["audio_audio"][0].t_device is None  # AudioData has no header


def test_bag_replay_is_deterministic_and_selectable(bag):
    runs = [[(s.source, s.seq) for s in _replay(bag)[1]] for _ in range(2)]
    assert runs[0] == runs[1]
    sources, got = _replay(bag, topics={"/thermal/image_raw": "thermal", "/imu/data": "imu"})
    assert sorted(s.name for s in sources) == ["imu_data", "thermal_image_raw"] and len(got) == 2 * N


def test_bag_errors_name_the_problem(bag, tmp_path):
    with pytest.raises(StreamError, match="not in the bag"):
        open_replay(bag, topics=["/nope"])
    with pytest.raises(StreamError, match="audio_format"):
        open_replay(bag, topics=["/audio/audio"], audio_format="MP3")
