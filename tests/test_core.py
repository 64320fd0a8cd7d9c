"""Core helpers: config round trips, atomic writes, modality parsing, lazy imports, CLI entry."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal, Optional

import pytest

from edgebind import Modality
from edgebind._config import ConfigMixin
from edgebind._io import atomic_open, atomic_write_json, sha256_file
from edgebind._lazy import is_available, require
from edgebind.cli.main import main
from edgebind.errors import ConfigError, MissingDependencyError


@dataclasses.dataclass(frozen=True)
class _Inner(ConfigMixin):
    rate: float = 1.0


@dataclasses.dataclass(frozen=True)
class _Cfg(ConfigMixin):
    size: int = 224
    mean: tuple[float, ...] = (0.5, 0.25)
    mode: Literal["a", "b"] = "a"
    name: Optional[str] = None
    inner: _Inner = _Inner()


def test_config_round_trip_through_json():
    cfg = _Cfg(size=7, mean=(1.0, 2.0, 3.0), mode="b", name="x", inner=_Inner(rate=3))
    again = _Cfg.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.mean, tuple) and isinstance(again.inner.rate, float)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"sise": 3}, "unknown field(s) ['sise']"),
        ({"size": "3"}, "_Cfg.size: expected an integer"),
        ({"size": True}, "_Cfg.size: expected an integer"),
        ({"mode": "c"}, "_Cfg.mode: expected one of ['a', 'b']"),
        ({"mean": 3}, "_Cfg.mean: expected a list"),
        ({"inner": {"rate": "fast"}}, "_Cfg.inner.rate: expected a number"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_config_rejects_bad_fields_by_name(data, needle):
    with pytest.raises(ConfigError) as exc:
        _Cfg.from_dict(data)
    assert needle in str(exc.value)


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write('{"half": ')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}, "an interrupted write must keep the old file"
    assert [p.name for p in target.parent.iterdir()] == ["m.json"], "temp file left behind"


def test_sha256_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_modality_parsing():
    assert Modality.parse(" Vision ") is Modality.VISION
    assert Modality.parse_list("depth,imu,depth") == [Modality.DEPTH, Modality.IMU]
    with pytest.raises(ConfigError, match="unknown modality 'lidar'"):
        Modality.parse("lidar")
    with pytest.raises(ConfigError, match="no modality given"):
        Modality.parse_list("")


def test_lazy_require_names_the_extra():
    assert is_available("numpy") and not is_available("edgebind_no_such_module")
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgebind\[tensorrt\]'"):
        require("edgebind_no_such_module", extra="tensorrt")
    assert require("json") is json


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "edgebind 0.1" in capsys.readouterr().out
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_atomic_write_uses_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
