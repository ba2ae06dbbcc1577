"""The uplink protocols, by the name a `[[uplinks]]` table's `protocol` key gives: the only place
that names them. A new north protocol is a folder beside mqtt/, http/, tcp/ and hj212/ (its spec, its
uplink and a protocol.py describing both, agent/north/protocol.py) plus one line here."""

from __future__ import annotations

from typing import Any

from agent.model import Point
from agent.north.base import Uplink, UplinkContext
from agent.north.hj212.protocol import HJ212
from agent.north.http.protocol import HTTP
from agent.north.mqtt.protocol import MQTT
from agent.north.protocol import UplinkProtocol
from agent.north.tcp.protocol import TCP

PROTOCOLS: dict[str, UplinkProtocol] = {
    "mqtt": MQTT,
    "http": HTTP,
    "tcp": TCP,
    "hj212": HJ212,
}


def _protocol(spec: Any) -> UplinkProtocol:
    return next(p for p in PROTOCOLS.values() if type(spec) is p.spec_type)


def protocol_of(spec: Any) -> str:
    """The `protocol` name of a typed uplink spec."""
    return next(name for name, p in PROTOCOLS.items() if type(spec) is p.spec_type)


def make_uplink(spec: Any, ctx: UplinkContext) -> Uplink:
    """The uplink for a typed uplink spec (agent/config builds them)."""
    return _protocol(spec).uplink(spec, ctx)


def point_warnings(spec: Any, points: list[Point]) -> list[tuple[Point, str, str]]:
    """(point, column, warning) for each point the uplink cannot send as it is."""
    check = _protocol(spec).point_warnings
    return check(spec, points) if check is not None else []
