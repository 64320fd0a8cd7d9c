"""Sensor sources: live devices, replay of recordings and rosbag2/MCAP bags, synthetic test streams.

See :mod:`edgebind.runtime.sources.base` for the :class:`Sample` / :class:`Source` contract. Optional
device libraries (OpenCV, sounddevice, pyserial, pyrealsense2, soxr, soundfile, rosbags) are imported
only when a source opens its device (``pip install 'edgebind[sensors]'``).

Source specs (``open_source``, ``edgebind record --source``): ``[name=]kind:target[;key=value...]``,
keys being fields of the kind's config class, e.g. ``front=camera:0;width=1280;height=720``,
``csi:0``, ``thermal:/dev/video2;radiometric=centikelvin``, ``depth:realsense``, ``depth:/data/depth_npy``,
``mic:default;channels=2``, ``imu:/dev/ttyUSB0;baudrate=921600;accel_unit=g``, ``synthetic:vision;rate_hz=10``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from ...errors import ConfigError
from .base import (
    ClockConfig,
    ClockGuard,
    EndOfStream,
    RetryPolicy,
    Sample,
    Sink,
    Source,
    SourceHealth,
    StreamSource,
    stop_all,
)
from .camera import CameraConfig, CameraSource, jetson_csi_pipeline
from .depth import DepthCameraConfig, DepthSource
from .microphone import MicrophoneConfig, MicrophoneSource
from .replay import ReplayClock, ReplaySource, open_replay
from .serial_imu import SerialImuConfig, SerialImuSource
from .synthetic import SyntheticConfig, SyntheticSource
from .thermal import ThermalCameraConfig, ThermalSource, to_celsius

__all__ = [
    "CameraConfig", "CameraSource", "ClockConfig", "ClockGuard", "DepthCameraConfig", "DepthSource", "EndOfStream",
    "MicrophoneConfig", "MicrophoneSource", "ReplayClock", "ReplaySource", "RetryPolicy", "Sample", "SerialImuConfig",
    "SerialImuSource", "Sink", "Source", "SourceHealth", "StreamSource", "SyntheticConfig", "SyntheticSource",
    "ThermalCameraConfig", "ThermalSource", "jetson_csi_pipeline", "open_replay", "open_source", "parse_spec",
    "stop_all", "to_celsius",
]

_KINDS = {"camera": CameraConfig, "csi": CameraConfig, "thermal": ThermalCameraConfig, "depth": DepthCameraConfig,
          "mic": MicrophoneConfig, "microphone": MicrophoneConfig, "imu": SerialImuConfig, "serial": SerialImuConfig,
          "synthetic": SyntheticConfig}
_NAME = re.compile(r"^([A-Za-z_][\w-]*)=([a-z]+):")


def _coerce(cls: type, key: str, text: str, spec: str) -> Any:
    hints = typing.get_type_hints(cls)
    if key not in hints:
        known = sorted(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"source spec {spec!r}: unknown option {key!r}; options: {known}")
    hint = hints[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union and args else hint
    if text.lower() in ("none", "null") and type(None) in typing.get_args(hint):
        return None
    try:
        if base is bool:
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("1", "true", "yes")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if typing.get_origin(base) is tuple:
            return tuple(int(v) for v in text.split("|") if v)
    except ValueError:
        raise ConfigError(f"source spec {spec!r}: option {key}={text!r} is not a valid {getattr(base, '__name__', base)}") from None
    return text


def parse_spec(spec: str) -> tuple[str | None, str, str, dict[str, Any]]:
    """``[name=]kind:target[;k=v...]`` -> (name or None, kind, target, options)."""
    name = None
    m = _NAME.match(spec)
    rest = spec
    if m:
        name, rest = m.group(1), spec[len(m.group(1)) + 1:]
    kind, sep, tail = rest.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in _KINDS:
        raise ConfigError(f"source spec {spec!r}: expected [name=]kind:target[;key=value...] with kind one of {sorted(_KINDS)}")
    target, *opts = tail.split(";")
    options: dict[str, Any] = {}
    for opt in opts:
        if not opt.strip():
            continue
        key, eq, value = opt.partition("=")
        if not eq:
            raise ConfigError(f"source spec {spec!r}: option {opt!r} is not key=value")
        options[key.strip()] = _coerce(_KINDS[kind], key.strip(), value.strip(), spec)
    return name, kind, target.strip(), options


def open_source(spec: str) -> Source:
    """Build a (not yet started) source from a spec string (see the module docstring)."""
    name, kind, target, options = parse_spec(spec)
    where = f"source spec {spec!r}"
    if kind in ("camera", "csi"):
        if kind == "csi":
            options.setdefault("api", "gstreamer")
            target = jetson_csi_pipeline(int(target or 0), options.pop("width", None) or 1280,
                                         options.pop("height", None) or 720, int(options.get("fps") or 30))
        return CameraSource(CameraConfig.from_dict(dict(options, target=target or "0"), where=where), name=name or kind)
    if kind == "thermal":
        return ThermalSource(ThermalCameraConfig.from_dict(dict(options, target=target or "0"), where=where), name=name or kind)
    if kind == "depth":
        if target.lower() == "realsense":
            options.setdefault("backend", "realsense")
            target = ""
        return DepthSource(DepthCameraConfig.from_dict(dict(options, target=target), where=where), name=name or kind)
    if kind in ("mic", "microphone"):
        device = None if target in ("", "default") else target
        return MicrophoneSource(MicrophoneConfig.from_dict(dict(options, device=device), where=where), name=name or "mic")
    if kind in ("imu", "serial"):
        return SerialImuSource(SerialImuConfig.from_dict(dict(options, port=target or "/dev/ttyUSB0"), where=where),
                               name=name or "imu")
    config = SyntheticConfig.from_dict(dict(options, modality=target or "vision"), where=where)
    return SyntheticSource(config, name=name or f"synthetic_{config.modality}")
