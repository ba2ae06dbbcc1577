"""The south seam: the interface every protocol driver implements, the typed device spec it is
built from, and what a protocol says of itself so that config, tools and health need not know
protocols by name (drivers/registry.py keeps the list)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.common.problems import Problems
from agent.model import Point


class DeviceError(Exception):
    """The device cannot be reached at all; the message says what was tried."""


class Driver(Protocol):
    """Read-only access to one device. `read` never raises: failures become bad samples."""

    async def connect(self) -> None: ...

    async def read(self) -> list: ...  # list[agent.model.Sample]

    async def close(self) -> None: ...

    @property
    def connected(self) -> bool: ...


class Options(Protocol):
    """A protocol's typed device options (each protocol folder defines its own class)."""

    @property
    def endpoint(self) -> str: ...  # where the device is, for logs and status

    @property
    def where(self) -> str: ...  # endpoint plus unit: unique per device

    @property
    def bus(self) -> str | None: ...  # a line shared by several devices (one worker), or None

    def line(self) -> dict[str, Any]: ...  # settings every device on the bus must share


@dataclass
class DeviceSpec:
    name: str
    protocol: str
    poll_interval: float
    points_file: Path
    options: Any  # the protocol's Options
    timeout: float = 2.0
    integrity_interval: float = 60.0
    points: list[Point] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.options.endpoint

    @property
    def bus(self) -> str | None:
        return self.options.bus


@dataclass(frozen=True)
class ProtocolSpec:
    """What a protocol says of itself: its config keys (key -> (kind, required); kinds as
    agent/config/loader.py converts them), their limits, the typed options, the address
    syntax and checks of its point tables, and the driver factory."""

    keys: dict[str, tuple[str, bool]]
    options: Callable[[dict[str, Any]], Any]  # checked keys (defaults applied here) -> Options
    parse_address: Callable[[str, str], Any]  # (address text, point type) -> location; ValueError
    driver: Callable[[DeviceSpec], Driver]
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    check_options: Callable[[dict[str, Any]], list[tuple[str, str]]] = lambda _o: []
    check_point: Callable[[Point], list[tuple[str, str]]] = lambda _p: []
    check_table: Callable[[list[Point], Problems], None] = lambda _points, _problems: None
    secret_keys: tuple[str, ...] = ()  # option keys naming files that must be owner-only
    # `hazgate browse` (device, node, depth, limit, csv_out) -> exit code, for protocols with an
    # address space to list
    browse: Callable[[DeviceSpec, str | None, int, int, str | None], Awaitable[int]] | None = None
