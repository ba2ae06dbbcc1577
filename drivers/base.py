"""The one small interface every protocol driver implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.config.points import Point

GOOD, UNCERTAIN, BAD = "good", "uncertain", "bad"


@dataclass(slots=True)
class Sample:
    """One point as read from a device: raw value before scaling, quality and why."""

    point: Point
    raw: float | int | bool | None
    quality: str = GOOD
    reason: str | None = None
    ts: float | None = None  # device/source time (epoch seconds) when the protocol gives one


class DeviceError(Exception):
    """The device cannot be reached at all; the message says what was tried."""


class Driver(Protocol):
    """Read-only access to one device. `read` never raises: failures become bad samples."""

    async def connect(self) -> None: ...

    async def read(self) -> list[Sample]: ...

    async def close(self) -> None: ...

    @property
    def connected(self) -> bool: ...


def make_driver(device) -> Driver:  # noqa: ANN001 - DeviceConfig, imported lazily
    """Return the driver for a device's protocol."""
    if device.protocol == "modbus-tcp":
        from drivers.modbus.tcp import ModbusTcpDriver

        return ModbusTcpDriver(device)
    if device.protocol == "modbus-rtu":
        from drivers.modbus.rtu import ModbusRtuDriver

        return ModbusRtuDriver(device)
    if device.protocol == "opcua":
        from drivers.opcua.driver import OpcUaDriver

        return OpcUaDriver(device)
    raise DeviceError(
        f"device {device.name!r}: protocol {device.protocol!r} has no driver in this version; "
        "available: modbus-tcp, modbus-rtu, opcua"
    )
