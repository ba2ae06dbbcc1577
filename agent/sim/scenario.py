"""Scenario files for the simulated plant: which PLCs to serve and how each point's value moves.

```toml
[[plcs]]
name = "tank-farm-dcs"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = 5020
unit = 1
points = "points/tank-farm-dcs.csv"  # the gateway's own point table: addresses, types, scaling
refuse = ["hr:90"]                   # answered with Modbus exception 2 (illegal data address)

[plcs.signals]                       # values in engineering units; unlisted points hold 0
TK101_LT = { const = 7.25 }
TK101_TT = { ramp = [20.0, 40.0], period = "60s", noise = 0.1 }
PT101    = { sine = [0.2, 0.4], period = "30s" }
GT101    = { steps = [["0s", 0.0], ["20s", 30.0]], repeat = "60s" }
GT102    = { const = 1.5, noise = 0.2, freeze = [["30s", "45s"]] }   # flat-lined 30-45 s
R101_BYP = { steps = [["0s", false], ["10s", true], ["40s", false]] } # bypass on 10-40 s
```

`freeze` windows hold the value the signal had when each window began (a stuck transmitter);
they repeat with `repeat`. A float point stepped to `nan` reads as a bad value. A top-level
`t0 = <Unix seconds>` puts scenario time zero at that wall-clock instant instead of at the
simulator's start, so a test or a drill knows exactly when each step happens.
"""

from __future__ import annotations

import math
import random
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.common.durations import parse_duration
from agent.common.problems import ConfigError, Problems
from agent.config.points import load_point_table
from agent.model import Point
from agent.sim.options import SIM_PROTOCOLS, plc_options
from drivers.modbus.address import ModbusAddress, parse_modbus_address
from drivers.registry import PROTOCOLS

SHAPES = ("const", "ramp", "sine", "steps")


@dataclass
class Signal:
    shape: str
    const: float | bool = 0.0
    lo: float = 0.0
    hi: float = 0.0
    period: float = 60.0
    noise: float = 0.0
    steps: list[tuple[float, float | bool]] = field(default_factory=list)
    repeat: float | None = None
    freeze: list[tuple[float, float]] = field(default_factory=list)
    shift: float = 0.0  # added to t: scenario time zero at `t0` rather than at the start
    _held: dict[tuple[int, int], float | bool] = field(default_factory=dict)

    def value(self, t: float) -> float | bool:
        """The engineering value `t` seconds after the scenario started."""
        t += self.shift
        if self.freeze:
            cycle, tt = divmod(t, self.repeat) if self.repeat else (0.0, t)
            for i, (a, b) in enumerate(self.freeze):
                if a <= tt < b:
                    key = (i, int(cycle))
                    if key not in self._held:
                        self._held[key] = self._value(t - (tt - a))
                    return self._held[key]
        return self._value(t)

    def _value(self, t: float) -> float | bool:
        if self.shape == "const":
            v = self.const
        elif self.shape == "ramp":
            v = self.lo + (self.hi - self.lo) * ((t % self.period) / self.period)
        elif self.shape == "sine":
            mid, amp = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
            v = mid + amp * math.sin(2 * math.pi * t / self.period)
        else:
            tt = t % self.repeat if self.repeat else t
            v = self.steps[0][1]
            for at, val in self.steps:
                if tt >= at:
                    v = val
        if self.noise and not isinstance(v, bool):
            v += random.gauss(0.0, self.noise)
        return v


@dataclass
class SimPlc:
    name: str
    protocol: str
    host: str
    port: int
    unit: int
    points: list[Point]
    signals: dict[str, Signal]
    refuse: list[ModbusAddress]
    options: dict = field(default_factory=dict)  # Modbus RTU and OPC UA keys: agent/sim_options.py


def _signal(spec: object, where: str, problems: Problems, file: str) -> Signal | None:
    if not isinstance(spec, dict):
        problems.add(file, 1, where, f"must be a table such as {{ const = 1.0 }}; shapes: {', '.join(SHAPES)}")
        return None
    shapes = [s for s in SHAPES if s in spec]
    if len(shapes) != 1:
        problems.add(file, 1, where, f"give exactly one shape of {', '.join(SHAPES)}")
        return None
    sig = Signal(shapes[0])
    try:
        if "period" in spec:
            sig.period = parse_duration(spec["period"])
        if "repeat" in spec:
            sig.repeat = parse_duration(spec["repeat"])
        sig.noise = float(spec.get("noise", 0.0))
        if sig.shape == "const":
            sig.const = spec["const"]
        elif sig.shape in ("ramp", "sine"):
            sig.lo, sig.hi = (float(x) for x in spec[sig.shape])
        else:
            sig.steps = [(parse_duration(at), val) for at, val in spec["steps"]]
            if not sig.steps:
                raise ValueError("steps is empty")
        sig.freeze = [(parse_duration(a), parse_duration(b)) for a, b in spec.get("freeze", [])]
    except (ValueError, TypeError, KeyError) as exc:
        problems.add(file, 1, where, f"bad signal {spec!r}: {exc}")
        return None
    return sig


def load_scenario(path: str | Path) -> list[SimPlc]:
    path = Path(path)
    problems = Problems()
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        problems.add(file, 1, "file", "scenario file not found")
        raise ConfigError(problems) from None
    except tomllib.TOMLDecodeError as exc:
        problems.add(file, 1, "toml", f"syntax error: {exc}")
        raise ConfigError(problems) from None
    plcs: list[SimPlc] = []
    for i, raw in enumerate(data.get("plcs", [])):
        where = f"plcs[{i}]"
        proto = raw.get("protocol", "modbus-tcp")
        if proto not in SIM_PROTOCOLS:
            problems.add(file, 1, f"{where}.protocol", f"{proto!r} cannot be simulated; valid: {', '.join(SIM_PROTOCOLS)}")
            continue
        host = raw.get("host", "127.0.0.1")
        if proto != "modbus-rtu" and not str(host).startswith("127.") and host != "localhost":
            problems.add(file, 1, f"{where}.host", f"{host!r}: the simulator serves on loopback only; valid: 127.x.x.x")
            continue
        table = path.parent / raw.get("points", "")
        try:
            points = load_point_table(table, PROTOCOLS[proto], problems, str(table))
        except FileNotFoundError:
            problems.add(file, 1, f"{where}.points", f"point table {table} not found")
            continue
        signals: dict[str, Signal] = {}
        tags = {p.tag for p in points}
        for tag, spec in raw.get("signals", {}).items():
            if tag not in tags:
                problems.add(file, 1, f"{where}.signals.{tag}", "no such tag in the point table")
                continue
            if (sig := _signal(spec, f"{where}.signals.{tag}", problems, file)) is not None:
                signals[tag] = sig
        refuse = []
        for text in raw.get("refuse", []):
            try:
                refuse.append(parse_modbus_address(text))
            except ValueError as exc:
                problems.add(file, 1, f"{where}.refuse", str(exc))
        options = plc_options(proto, raw, path.parent, tags, problems, file, where)
        port = 0 if proto == "modbus-rtu" else int(raw.get("port", 4840 if proto == "opcua" else 5020))
        plcs.append(SimPlc(raw.get("name", where), proto, host, port,
                           int(raw.get("unit", 1)), points, signals, refuse, options))
    if not plcs and not problems:
        problems.add(file, 1, "plcs", "no [[plcs]] defined")
    t0 = data.get("t0")
    if t0 is not None and (isinstance(t0, bool) or not isinstance(t0, int | float)):
        problems.add(file, 1, "t0", f"{t0!r} is not a time; valid: Unix seconds such as 1764000000.5")
    if problems:
        raise ConfigError(problems)
    if t0 is not None:  # the caller starts its clock right after this returns
        shift = time.time() - t0
        for plc in plcs:
            for sig in plc.signals.values():
                sig.shift = shift
    return plcs
