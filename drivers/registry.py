"""The south protocols, by the name a device's `protocol` key gives: the only place that names
them. A new protocol is a folder beside modbus/ and opcua/ plus one line here."""

from __future__ import annotations

from drivers.base import DeviceError, DeviceSpec, Driver, ProtocolSpec
from drivers.modbus.protocol import RTU, TCP
from drivers.opcua.protocol import OPCUA

PROTOCOLS: dict[str, ProtocolSpec] = {
    "modbus-tcp": TCP,
    "modbus-rtu": RTU,
    "opcua": OPCUA,
}


def make_driver(device: DeviceSpec) -> Driver:
    """The driver for a device's protocol."""
    proto = PROTOCOLS.get(device.protocol)
    if proto is None:
        raise DeviceError(f"device {device.name!r}: protocol {device.protocol!r} has no driver in this "
                          f"version; available: {', '.join(PROTOCOLS)}")
    return proto.driver(device)
