"""Typed check rules: interlock declarations, gas-detector and alarm settings, as
agent/config/rules.py reads them from the technician's TOML (see there for the file format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.model import Point

GAS_KINDS = ("gas_lel", "gas_ppm")
GASES = ("combustible", "toxic", "oxygen")

@dataclass
class Defaults:
    on_delay: float = 0.0
    bypass_max: float = 8 * 3600.0
    bypass_repeat: float = 3600.0
    flatline: float = 30 * 60.0  # 0: off
    flatline_band: float = 0.0
    trip_window: float = 10.0


@dataclass
class AlarmSetting:
    tag: str
    line: int
    on_delay: float | None = None
    deadband: float | None = None


@dataclass
class DetectorSetting:
    tag: str
    line: int
    gas: str | None = None
    oel: float | None = None
    fault: str | None = None
    flatline: float | None = None
    flatline_band: float | None = None


@dataclass
class Protect:
    tag: str
    line: int
    above: float | None = None  # trip when value >= above
    below: float | None = None  # trip when value <= below

    @property
    def limit(self) -> float:
        return self.above if self.above is not None else self.below  # type: ignore[return-value]


@dataclass
class Interlock:
    id: str
    line: int
    name: str = ""
    hazard_source: str = ""
    bypass: tuple[str, ...] = ()
    in_service: str | None = None
    tripped: str | None = None
    bypass_max: float = 8 * 3600.0
    bypass_repeat: float = 3600.0
    protects: list[Protect] = field(default_factory=list)

    def tags(self) -> list[str]:
        state = [*self.bypass, *(t for t in (self.in_service, self.tripped) if t)]
        return state + [p.tag for p in self.protects]


@dataclass
class Rules:
    path: Path | None = None
    defaults: Defaults = field(default_factory=Defaults)
    alarms: dict[str, AlarmSetting] = field(default_factory=dict)
    detectors: dict[str, DetectorSetting] = field(default_factory=dict)
    interlocks: list[Interlock] = field(default_factory=list)


# --- gas classes and setpoint ceilings ------------------------------------------------------
def gas_class(point: Point, rules: Rules | None = None) -> str | None:
    """combustible / toxic / oxygen for a gas detector point, None for any other point."""
    if point.kind not in GAS_KINDS:
        return None
    setting = rules.detectors.get(point.tag) if rules else None
    if setting is not None and setting.gas:
        return setting.gas
    if point.unit.replace(" ", "").lower() in ("%vol", "%v/v", "vol%"):
        return "oxygen"
    return "combustible" if point.kind == "gas_lel" else "toxic"


def fault_points(points: list[Point], rules: Rules | None) -> dict[str, str]:
    """gas detector tag -> its detector_fault point: named in the rules, else by equipment code."""
    by_equipment: dict[str, str] = {}
    for p in points:
        if p.kind == "detector_fault" and p.equipment:
            by_equipment.setdefault(p.equipment, p.tag)
    out = {}
    for p in points:
        if p.kind not in GAS_KINDS:
            continue
        setting = rules.detectors.get(p.tag) if rules else None
        if setting is not None and setting.fault:
            out[p.tag] = setting.fault
        elif p.equipment and p.equipment in by_equipment:
            out[p.tag] = by_equipment[p.equipment]
    return out
