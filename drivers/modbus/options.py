"""Typed options of Modbus devices: TCP (one connection per device) and RTU (units on a serial
line shared by every device configured on that port)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SERIAL_DEFAULTS = {"baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8, "request_pause": None}
PLAN_KEYS = {"max_gap": ("int", False), "max_registers": ("int", False), "max_bits": ("int", False)}
PLAN_LIMITS = {"max_gap": (0, 120), "max_registers": (1, 125), "max_bits": (1, 2000)}


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
    def endpoint(self) -> str:
        return self.port

    @property
    def where(self) -> str:
        return f"{self.port} unit {self.unit}"

    @property
    def bus(self) -> str | None:
        return self.port

    def line(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in SERIAL_DEFAULTS}
