"""The shared vocabulary: a point as the technician declared it, a sample as a driver read it,
a reading as the pipeline keeps it, and the quality names and codes. One place for each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GOOD, UNCERTAIN, BAD = "good", "uncertain", "bad"
QUALITIES = (GOOD, UNCERTAIN, BAD)
QUALITY_CODE = {GOOD: 0, UNCERTAIN: 1, BAD: 2}  # as stored
QUALITY_NAME = QUALITIES  # code -> name

BYTE_ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
TYPES = ("bool", "int16", "uint16", "int32", "uint32", "float32", "float64")
KINDS = (
    "level", "temperature", "pressure", "flow", "gas_lel", "gas_ppm",
    "interlock_status", "bypass", "trip", "detector_fault", "other",
)


@dataclass(slots=True)
class Point:
    tag: str
    address: str  # as written: a Modbus address, an OPC UA NodeId, ...
    type: str
    line: int
    file: str
    name: str = ""
    byte_order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    raw_min: float | None = None
    raw_max: float | None = None
    eng_min: float | None = None
    eng_max: float | None = None
    unit: str = ""
    kind: str = "other"
    hazard_source: str = ""
    equipment: str = ""
    target_code: str = ""
    deadband: float = 0.0
    ll: float | None = None
    l: float | None = None  # noqa: E741 - the platform's name for the low limit
    h: float | None = None
    hh: float | None = None
    overlap: bool = False
    location: Any = None  # the address as its protocol parsed it (drivers/registry.py)

    def to_engineering(self, raw: float | int | bool) -> float | bool:
        """Scale a raw value to engineering units (booleans pass through)."""
        if self.type == "bool":
            return bool(raw)
        if self.raw_min is not None and self.raw_max is not None:
            span = self.raw_max - self.raw_min
            return self.eng_min + (raw - self.raw_min) * (self.eng_max - self.eng_min) / span  # type: ignore[operator]
        if self.scale == 1.0 and self.offset == 0.0:
            return raw
        return raw * self.scale + self.offset

    def to_raw(self, eng: float | bool) -> float | int | bool:
        """Inverse of to_engineering (used by the simulator)."""
        if self.type == "bool":
            return bool(eng)
        if self.raw_min is not None and self.raw_max is not None:
            span = self.eng_max - self.eng_min  # type: ignore[operator]
            raw = self.raw_min + (eng - self.eng_min) * (self.raw_max - self.raw_min) / span  # type: ignore[operator]
        else:
            raw = (eng - self.offset) / self.scale
        return raw if self.type.startswith("float") else int(round(raw))

    def metadata(self) -> dict:
        """Static description of the point for the uplinks (`meta`, registrations)."""
        return {
            "tag": self.tag, "name": self.name, "unit": self.unit, "kind": self.kind,
            "type": self.type, "hazard_source": self.hazard_source, "equipment": self.equipment,
            "target_code": self.target_code, "range": [self.eng_min, self.eng_max],
            "limits": {"ll": self.ll, "l": self.l, "h": self.h, "hh": self.hh},
        }


@dataclass(slots=True)
class Sample:
    """One point as read from a device: raw value before scaling, quality and why."""

    point: Point
    raw: float | int | bool | None
    quality: str = GOOD
    reason: str | None = None
    ts: float | None = None  # device/source time (epoch seconds) when the protocol gives one


@dataclass(slots=True)
class Reading:
    """One point in engineering units at its collection time, with its quality."""

    point: Point
    ts_ms: int
    value: float | bool | None
    quality: str
    reason: str | None
