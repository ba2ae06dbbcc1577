"""Typed options of Modbus devices: TCP (one connection per device) and RTU (units on a serial
line shared by every device configured on that port, or on the serial port of a device server
reached at `tcp://HOST:PORT` or `udp://HOST:PORT`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from agent.common.hosts import HOST_VALID, host_fault

SERIAL_DEFAULTS = {"baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8, "request_pause": None}
PLAN_KEYS = {"max_gap": ("int", False), "max_registers": ("int", False), "max_bits": ("int", False)}
PLAN_LIMITS = {"max_gap": (0, 120), "max_registers": (1, 125), "max_bits": (1, 2000)}
SERVER_SCHEMES = ("tcp", "udp")
PORT_VALID = ("a serial device such as /dev/ttyUSB0, or a serial device server's port as tcp://HOST:PORT "
              "or udp://HOST:PORT, e.g. tcp://192.168.1.30:4001")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:/]*))(?::(?P<port>[^/]*))?(?P<rest>.*)$")


class DeviceServer(NamedTuple):
    """Where a serial device server (RS-485 to Ethernet) serves its serial port."""

    scheme: str  # tcp | udp
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def device_server(port: str) -> DeviceServer | None:
    """The device server `port` names, None for a serial device; ValueError saying what is wrong."""
    if "://" not in port:
        return None
    m = _URL.match(port)
    if m is None or m["scheme"].lower() not in SERVER_SCHEMES:
        scheme = port.partition("://")[0]
        raise ValueError(f"{port!r}: {scheme}:// is not a way to reach a serial line; valid: {PORT_VALID}")
    host = m["v6"] if m["v6"] is not None else m["host"]
    if not host:
        raise ValueError(f"{port!r} has no host; valid: {PORT_VALID}")
    if fault := host_fault(host):
        raise ValueError(f"{port!r}: {host!r} is {fault}; valid: {HOST_VALID}")
    if m["port"] is None:
        raise ValueError(f"{port!r} has no port number; valid: the device server's TCP or UDP port of the serial "
                         "line, e.g. tcp://192.168.1.30:4001 (Moxa NPort port 1 in TCP server mode)")
    if not (m["port"].isascii() and m["port"].isdigit()) or not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"{port!r}: port {m['port']!r} is not a number 1-65535; valid: {PORT_VALID}")
    if m["rest"] not in ("", "/"):
        raise ValueError(f"{port!r}: {m['rest']!r} after the port has no meaning; valid: {PORT_VALID}")
    return DeviceServer(m["scheme"].lower(), host.lower(), int(m["port"]))


@dataclass(frozen=True)
class ModbusTcpOptions:
    host: str
    port: int = 502
    unit: int = 1
    max_gap: int = 8
    max_registers: int = 125
    max_bits: int = 2000

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def where(self) -> str:
        return f"{self.endpoint} unit {self.unit}"

    @property
    def bus(self) -> str | None:
        return None

    def line(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class ModbusRtuOptions:
    port: str
    unit: int = 1
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    request_pause: float | None = None  # None: 3.5 character times
    max_gap: int = 8
    max_registers: int = 125
    max_bits: int = 2000

    @property
    def server(self) -> DeviceServer | None:
        """The serial device server the line is reached through, None for a local serial port."""
        return device_server(self.port)

    @property
    def endpoint(self) -> str:
        return self.bus

    @property
    def where(self) -> str:
        return f"{self.bus} unit {self.unit}"

    @property
    def bus(self) -> str:
        return self.port if self.server is None else str(self.server)

    def line(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SERIAL_DEFAULTS}
