"""Replay of ROS 2 bags (rosbag2 sqlite3 folders, MCAP files or folders) with the ``rosbags`` library.

One :class:`BagTopicSource` per topic, all sharing one :class:`~.replay.ReplayClock` (deterministic
order by bag receive timestamp). Times: the recorded ``t_capture`` is the bag's receive timestamp
(ns -> s); ``t_device`` is ``header.stamp`` where the message has a header.

Supported messages and the modality they feed:

- ``sensor_msgs/msg/Image``: rgb8/bgr8/rgba8/bgra8/mono8 -> vision (uint8 RGB); ``32FC1`` -> depth
  (metres; NaN/inf -> 0 per REP 117/118); ``16UC1`` -> depth (x ``depth_scale``, default mm); ``mono16``
  -> thermal (raw uint16). A topic whose name contains "thermal", "lwir" or "flir" is thermal
  (mono8/mono16/16UC1), one containing "depth" is depth.
- ``sensor_msgs/msg/CompressedImage``: jpeg/png -> vision (or thermal by topic name); formats with
  ``compressedDepth`` -> depth (16UC1 PNG in mm, or 32FC1 quantised inverse depth).
- ``sensor_msgs/msg/Imu`` -> imu, one row per message ([ax, ay, az, gx, gy, gz]; a message whose
  ``linear_acceleration_covariance[0]`` or ``angular_velocity_covariance[0]`` is -1 lacks that field
  and is rejected).
- audio, ROS 2 has no standard message: ``audio_common_msgs/msg/AudioData`` (``uint8[] data``; the
  type is registered from that definition when the bag does not carry it) decoded as
  ``audio_format`` (S16LE default, S32LE, F32LE, U8) with ``audio_channels`` interleaved channels at
  ``audio_rate`` Hz (default 16000; AudioData has no rate field); and ``std_msgs/msg/Float32MultiArray``
  holding float32 samples at ``audio_rate`` (1-D: mono; 2-D layout: dim[0] frames x dim[1] channels).

``topics`` selects topics, or maps topic -> modality to override the guess.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..._lazy import require
from ...errors import StreamError
from ...modality import Modality
from .replay import Event, ReplayClock, ReplaySource

AUDIO_DATA = "audio_common_msgs/msg/AudioData"
AUDIO_DATA_MSGDEF = "uint8[] data\n"
IMAGE, COMPRESSED, IMU, F32ARRAY = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                                    "sensor_msgs/msg/Imu", "std_msgs/msg/Float32MultiArray")
SUPPORTED = (IMAGE, COMPRESSED, IMU, AUDIO_DATA, F32ARRAY)
_AUDIO_DTYPES = {"S16LE": ("<i2", 32768.0), "S32LE": ("<i4", 2147483648.0), "F32LE": ("<f4", 1.0), "U8": ("u1", None)}
_THERMAL_WORDS = ("thermal", "lwir", "flir")


def make_typestore() -> Any:
    """A ROS 2 Humble typestore with ``audio_common_msgs/msg/AudioData`` registered."""
    typesys = require("rosbags.typesys", extra="sensors", purpose="rosbag2/MCAP replay")
    store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    store.register(typesys.get_types_from_msg(AUDIO_DATA_MSGDEF, AUDIO_DATA))
    return store


def _register_from_bag(store: Any, connections: Sequence[Any]) -> None:
    typesys = require("rosbags.typesys", extra="sensors")
    for conn in connections:
        if conn.msgtype not in store.types and conn.msgdef is not None and conn.msgdef.data:
            try:
                store.register(typesys.get_types_from_msg(conn.msgdef.data, conn.msgtype))
            except Exception:  # noqa: BLE001 - an unparsable definition only matters for that topic
                pass


def _stamp(msg: Any) -> Optional[float]:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return float(header.stamp.sec) + float(header.stamp.nanosec) * 1e-9


def _guess(topic: str, msgtype: str, first: Any) -> Optional[Modality]:
    name = topic.lower()
    if msgtype == IMU:
        return Modality.IMU
    if msgtype in (AUDIO_DATA, F32ARRAY):
        return Modality.AUDIO
    if msgtype not in (IMAGE, COMPRESSED):
        return None
    if any(w in name for w in _THERMAL_WORDS):
        return Modality.THERMAL
    if "depth" in name:
        return Modality.DEPTH
    if msgtype == COMPRESSED:
        return Modality.DEPTH if "compresseddepth" in first.format.lower().replace(" ", "") else Modality.VISION
    enc = first.encoding.lower()
    if enc in ("32fc1", "16uc1"):
        return Modality.DEPTH
    if enc == "mono16":
        return Modality.THERMAL
    return Modality.VISION


def image_to_array(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> H x W (x C) array in its native dtype (rows padded by ``step`` are cut)."""
    enc = msg.encoding.lower()
    table = {"rgb8": ("u1", 3), "bgr8": ("u1", 3), "rgba8": ("u1", 4), "bgra8": ("u1", 4), "mono8": ("u1", 1),
             "8uc1": ("u1", 1), "mono16": ("u2", 1), "16uc1": ("u2", 1), "32fc1": ("f4", 1)}
    if enc not in table:
        raise StreamError(f"sensor_msgs/Image encoding {msg.encoding!r} is not supported; expected one of {sorted(table)}")
    kind, channels = table[enc]
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    raw = np.asarray(msg.data, dtype=np.uint8)
    if raw.size < h * step or step < w * channels * dtype.itemsize:
        raise StreamError(f"sensor_msgs/Image: {raw.size} bytes for {h} rows of step {step} ({w} x {msg.encoding})")
    rows = raw[: h * step].reshape(h, step)[:, : w * channels * dtype.itemsize]
    arr = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder("="))
    return arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)


def _decode_compressed(msg: Any, modality: Modality, depth_scale: float) -> np.ndarray:
    cv2 = require("cv2", extra="sensors", purpose="decoding CompressedImage")
    data = np.asarray(msg.data, dtype=np.uint8).tobytes()
    fmt = msg.format.lower().replace(" ", "")
    if "compresseddepth" in fmt:
        png_at = data.find(b"\x89PNG")
        if png_at < 0:
            raise StreamError(f"CompressedImage format {msg.format!r}: no PNG payload")
        img = cv2.imdecode(np.frombuffer(data[png_at:], np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise StreamError("CompressedImage: PNG payload does not decode")
        if fmt.startswith("32fc1"):  # header: int32 format, float32 quantA, float32 quantB; inverse depth
            _, qa, qb = struct.unpack("<iff", data[:12])
            v = img.astype(np.float32)
            return np.where(v > 0, qa / np.maximum(v - qb, 1e-6), 0.0).astype(np.float32)
        return img.astype(np.float32) * np.float32(depth_scale)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise StreamError(f"CompressedImage ({msg.format!r}) does not decode")
    if modality is Modality.VISION:
        if img.ndim == 2:
            return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if modality is Modality.DEPTH:
        return img.astype(np.float32) * np.float32(depth_scale) if img.dtype != np.float32 else img
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)


class BagTopicSource(ReplaySource):
    """Replays one topic of a rosbag2/MCAP bag (see the module docstring)."""

    def __init__(self, path: Union[str, Path], topic: str, msgtype: str, modality: Modality, *,
                 clock: ReplayClock | None = None, realtime: bool = False, name: Optional[str] = None,
                 audio_rate: int = 16000, audio_format: str = "S16LE", audio_channels: int = 1, depth_scale: float = 0.001):
        super().__init__(name or topic.strip("/").replace("/", "_") or "topic", modality, clock=clock, realtime=realtime)
        if audio_format not in _AUDIO_DTYPES:
            raise StreamError(f"audio_format: expected one of {sorted(_AUDIO_DTYPES)}, got {audio_format!r}")
        self.path, self.topic, self.msgtype = Path(path), topic, msgtype
        self.audio_rate, self.audio_format, self.audio_channels = audio_rate, audio_format, audio_channels
        self.depth_scale = depth_scale

    def _events(self) -> Iterator[Event]:
        rosbag2 = require("rosbags.rosbag2", extra="sensors", purpose="rosbag2/MCAP replay")
        store = make_typestore()
        with rosbag2.Reader(self.path) as reader:
            conns = [c for c in reader.connections if c.topic == self.topic]
            _register_from_bag(store, conns)
            for _conn, timestamp, raw in reader.messages(connections=conns):
                t = timestamp * 1e-9
                try:
                    msg = store.deserialize_cdr(raw, self.msgtype)
                    data, meta = self._convert(msg)
                except Exception as exc:  # noqa: BLE001 - a bad message is rejected, not fatal
                    self._reject(f"{self.topic} @ {timestamp}: {type(exc).__name__}: {exc}")
                    continue
                if data is not None:
                    yield t, data, _stamp(msg), meta

    def _convert(self, msg: Any) -> tuple[Optional[np.ndarray], dict]:
        m = self.modality
        meta: dict[str, Any] = {"topic": self.topic}
        if self.msgtype == IMU:
            acov, gcov = msg.linear_acceleration_covariance, msg.angular_velocity_covariance
            if acov[0] == -1 or gcov[0] == -1:
                raise StreamError("Imu message without acceleration or angular velocity (covariance[0] == -1)")
            a, g = msg.linear_acceleration, msg.angular_velocity
            return np.array([[a.x, a.y, a.z, g.x, g.y, g.z]], dtype=np.float64), meta
        if self.msgtype == AUDIO_DATA:
            kind, full = _AUDIO_DTYPES[self.audio_format]
            raw = np.asarray(msg.data, dtype=np.uint8).tobytes()
            x = np.frombuffer(raw[: len(raw) - len(raw) % np.dtype(kind).itemsize], dtype=kind)
            x = (x.astype(np.float32) - 128.0) / 128.0 if full is None else x.astype(np.float32) / np.float32(full)
            return self._audio(x, self.audio_channels), dict(meta, rate=self.audio_rate)
        if self.msgtype == F32ARRAY:
            x = np.asarray(msg.data, dtype=np.float32)
            dims = msg.layout.dim
            ch = int(dims[1].size) if len(dims) >= 2 and dims[1].size > 0 else 1
            return self._audio(x, ch), dict(meta, rate=self.audio_rate)
        if self.msgtype == COMPRESSED:
            return _decode_compressed(msg, m, self.depth_scale), meta
        arr = image_to_array(msg)
        enc = msg.encoding.lower()
        if m is Modality.VISION:
            cv2 = require("cv2", extra="sensors")
            conv = {"bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB, "bgra8": cv2.COLOR_BGRA2RGB,
                    "mono8": cv2.COLOR_GRAY2RGB, "8uc1": cv2.COLOR_GRAY2RGB}.get(enc)
            if arr.dtype != np.uint8:
                raise StreamError(f"{self.topic}: encoding {msg.encoding!r} is not a colour image")
            return (cv2.cvtColor(arr, conv) if conv is not None else arr), dict(meta, format="rgb")
        if m is Modality.DEPTH:
            if arr.dtype == np.float32:
                return np.where(np.isfinite(arr), np.maximum(arr, 0.0), 0.0).astype(np.float32), meta
            return arr.astype(np.float32) * np.float32(self.depth_scale), meta
        if arr.ndim != 2:
            raise StreamError(f"{self.topic}: thermal image with encoding {msg.encoding!r} is not single-channel")
        return arr, dict(meta, format="y16" if arr.dtype == np.uint16 else "u8")

    @staticmethod
    def _audio(x: np.ndarray, channels: int) -> np.ndarray:
        if channels > 1:
            x = x[: len(x) - len(x) % channels].reshape(-1, channels)
        return x

    def _emit(self, data: np.ndarray, **kw: Any) -> bool:
        if self.modality is Modality.IMU:  # one row per message, at the delivered capture time
            kw["meta"] = dict(kw.get("meta") or {}, t=np.array([kw["t_capture"]], dtype=np.float64))
        return super()._emit(data, **kw)


def list_topics(path: Union[str, Path]) -> dict[str, str]:
    """Topic -> message type of a bag."""
    rosbag2 = require("rosbags.rosbag2", extra="sensors", purpose="rosbag2/MCAP replay")
    with rosbag2.Reader(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def open_bag(path: Union[str, Path], *, realtime: bool = False, speed: float = 1.0,
             topics: Union[Mapping[str, str], Sequence[str], None] = None, clock: ReplayClock | None = None,
             **options: Any) -> list[ReplaySource]:
    """One :class:`BagTopicSource` per supported topic (or per topic in ``topics``), sharing one clock.

    ``options``: ``audio_rate``, ``audio_format``, ``audio_channels``, ``depth_scale``.
    """
    rosbag2 = require("rosbags.rosbag2", extra="sensors", purpose="rosbag2/MCAP replay")
    unknown = sorted(set(options) - {"audio_rate", "audio_format", "audio_channels", "depth_scale"})
    if unknown:
        raise StreamError(f"open_bag: unknown option(s) {unknown}; expected audio_rate, audio_format, audio_channels, depth_scale")
    path = Path(path)
    store = make_typestore()
    chosen: dict[str, tuple[str, Modality]] = {}
    overrides = dict(topics) if isinstance(topics, Mapping) else {}
    wanted = set(topics) if topics is not None else None
    with rosbag2.Reader(path) as reader:
        by_topic = {c.topic: c for c in reader.connections}
        _register_from_bag(store, list(by_topic.values()))
        missing = sorted(wanted - set(by_topic)) if wanted is not None else []
        if missing:
            raise StreamError(f"{path}: topic(s) {missing} not in the bag; topics: {sorted(by_topic)}")
        for topic in sorted(by_topic):
            conn = by_topic[topic]
            if (wanted is not None and topic not in wanted) or conn.msgtype not in SUPPORTED:
                continue
            if topic in overrides:
                modality = Modality.parse(overrides[topic])
            else:
                first = None
                if conn.msgtype in (IMAGE, COMPRESSED):
                    for _c, _t, raw in reader.messages(connections=[conn]):
                        first = store.deserialize_cdr(raw, conn.msgtype)
                        break
                    if first is None:
                        continue
                modality = _guess(topic, conn.msgtype, first)
            if modality is not None:
                chosen[topic] = (conn.msgtype, modality)
    if not chosen:
        raise StreamError(f"{path}: no replayable topic; supported message types: {', '.join(SUPPORTED)}")
    clock = clock or ReplayClock(realtime=realtime, speed=speed)
    return [BagTopicSource(path, t, mt, m, clock=clock, realtime=realtime, **options) for t, (mt, m) in chosen.items()]
