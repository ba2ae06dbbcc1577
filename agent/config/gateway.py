"""The whole gateway config, typed: what the loader returns and the assembly hands out, each
part its own spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

from agent.common.clock import ClockConfig
from agent.common.problems import Problem
from agent.model import Point
from agent.north.mqtt.spec import MqttSpec, MqttUplinkSpec
from agent.pipeline.checks.rules import Rules
from agent.pipeline.store import StoreBounds
from drivers.base import DeviceSpec


@dataclass
class GatewayConfig:
    path: Path
    gateway_id: str
    enterprise_code: str
    data_dir: Path
    uplinks: list[Any]  # every uplink's typed spec, unique names (`[uplink]` first, as `mqtt`)
    devices: list[DeviceSpec]
    rules_file: Path | None = None
    store: StoreBounds = field(default_factory=StoreBounds)
    clock: ClockConfig = field(default_factory=ClockConfig)
    health_listen: tuple[str, int] | None = None  # [health] listen; None: no health endpoint
    rules: Rules = field(default_factory=Rules)  # interlocks, detector and alarm settings
    timezone: tzinfo | None = None  # `[gateway] timezone` (None: the system's)
    warnings: list[Problem] = field(default_factory=list)  # what `validate` shows and `run` logs
    inservice_daily: tuple[int, int] | None = (0, 5)  # [checks] inservice_daily: (hour, minute) local; None: off

    @property
    def mqtt(self) -> MqttSpec | None:
        """The broker settings of the first MQTT uplink (the live view and `receive` use it)."""
        return next((u.mqtt for u in self.uplinks if isinstance(u, MqttUplinkSpec)), None)

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        names = ", ".join(d.name for d in self.devices)
        raise KeyError(f"no device named {name!r} in {self.path}; devices: {names}")

    def all_points(self) -> list[Point]:
        return [p for d in self.devices for p in d.points]

    def device_of(self) -> dict[str, str]:
        """tag -> the name of the device it is read from."""
        return {p.tag: d.name for d in self.devices for p in d.points}

    def client_certificates(self) -> list[tuple[str, Path]]:
        """The TLS client certificates the gateway presents: (use, path)."""
        found = []
        for u in self.uplinks:
            mqtt = getattr(u, "mqtt", None)  # MQTT uplinks may present a client certificate
            if mqtt is not None and mqtt.cert_file is not None:
                found.append((f"uplink:{u.name}", mqtt.cert_file))
        for dev in self.devices:
            cert = getattr(dev.options, "certificate", None)  # options of a protocol with client certificates
            if cert:
                found.append((f"device:{dev.name}", Path(cert)))
        return found
