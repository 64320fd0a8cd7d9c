"""The six ImageBind modalities. Modality strings anywhere in edgebind come from this enum."""

from __future__ import annotations

import enum

from .errors import ConfigError


class Modality(str, enum.Enum):
    VISION = "vision"
    TEXT = "text"
    AUDIO = "audio"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: "str | Modality") -> "Modality":
        if isinstance(value, Modality):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(
                f"unknown modality {value!r}; expected one of {', '.join(m.value for m in cls)}"
            ) from None

    @classmethod
    def parse_list(cls, values: "str | list[str] | tuple[str, ...]") -> "list[Modality]":
        """Parse 'vision,text' or ['vision', 'text'] into a de-duplicated list, keeping order."""
        if isinstance(values, str):
            values = [v for v in values.split(",") if v.strip()]
        out: list[Modality] = []
        for v in values:
            m = cls.parse(v)
            if m not in out:
                out.append(m)
        if not out:
            raise ConfigError("no modality given; expected one or more of " + ", ".join(m.value for m in cls))
        return out


ALL_MODALITIES: tuple[Modality, ...] = tuple(Modality)
