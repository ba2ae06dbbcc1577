"""The uplink protocols, by the name a `[[uplinks]]` table's `protocol` key gives: the only place
that names them. A new north protocol is a folder beside mqtt/, http/ and tcp/ (its spec, its
uplink and a protocol.py describing both, agent/north/protocol.py) plus one line here."""

from __future__ import annotations

from typing import Any

from agent.north.base import Uplink, UplinkContext
from agent.north.http.protocol import HTTP
from agent.north.mqtt.protocol import MQTT
from agent.north.protocol import UplinkProtocol
from agent.north.tcp.protocol import TCP

PROTOCOLS: dict[str, UplinkProtocol] = {
    "mqtt": MQTT,
    "http": HTTP,
    "tcp": TCP,
}


def make_uplink(spec: Any, ctx: UplinkContext) -> Uplink:
    """The uplink for a typed uplink spec (agent/config builds them)."""
    proto = next(p for p in PROTOCOLS.values() if type(spec) is p.spec_type)
    return proto.uplink(spec, ctx)
