"""What Modbus TCP and Modbus RTU say of themselves (drivers/registry.py lists them)."""

from __future__ import annotations

from typing import Any

from drivers.base import DeviceSpec, Driver, ProtocolSpec
from drivers.modbus.address import parse_modbus_address
from drivers.modbus.options import (
    PLAN_KEYS,
    PLAN_LIMITS,
    ModbusRtuOptions,
    ModbusTcpOptions,
    device_server,
)
from drivers.modbus.points import check_overlaps, check_point


def _tcp_driver(device: DeviceSpec) -> Driver:
    from drivers.modbus.tcp import ModbusTcpDriver  # here: pymodbus only when a device needs it

    return ModbusTcpDriver(device)


def _rtu_driver(device: DeviceSpec) -> Driver:
    from drivers.modbus.rtu import ModbusRtuDriver  # here: pymodbus and pyserial on demand

    return ModbusRtuDriver(device)


def _check_rtu(keys: dict[str, Any]) -> list[tuple[str, str]]:
    """A `port` written as a URL must name a serial device server (tcp:// or udp://, host, port)."""
    try:
        device_server(keys.get("port", ""))
    except ValueError as exc:
        return [("port", str(exc))]
    return []


# Unit ids: Modbus TCP carries 0-255 (255 is what the spec recommends for a directly addressed
# device, 0 what some servers answer to); on a serial line 0 is broadcast (nothing answers) and
# 248-255 are reserved, so RTU units are 1-247.
TCP = ProtocolSpec(
    keys={"host": ("host", True), "port": ("int", False), "unit": ("int", False), **PLAN_KEYS},
    limits={"unit": (0, 255), "port": (1, 65535), **PLAN_LIMITS},
    options=lambda keys: ModbusTcpOptions(**keys),
    parse_address=parse_modbus_address,
    check_point=check_point,
    check_table=check_overlaps,
    driver=_tcp_driver,
)

RTU = ProtocolSpec(
    keys={"port": ("str", True), "baudrate": ("int", False), "parity": ("enum:N|E|O", False),
          "stopbits": ("int", False), "bytesize": ("int", False), "unit": ("int", False),
          **PLAN_KEYS, "request_pause": ("duration", False)},
    limits={"unit": (1, 247), "baudrate": (300, 921600), "bytesize": (7, 8), "stopbits": (1, 2), **PLAN_LIMITS},
    options=lambda keys: ModbusRtuOptions(**keys),
    check_options=_check_rtu,
    parse_address=parse_modbus_address,
    check_point=check_point,
    check_table=check_overlaps,
    driver=_rtu_driver,
)
