"""The uplink protocols, by the type of their spec: the only place that names them. A new
north protocol is a folder beside mqtt/, http/ and tcp/ plus one line here."""

from __future__ import annotations

from typing import Any

from agent.north.base import Uplink, UplinkContext
from agent.north.http.spec import HttpSpec
from agent.north.http.uplink import HttpUplink
from agent.north.mqtt.spec import MqttUplinkSpec
from agent.north.mqtt.uplink import MqttUplink
from agent.north.tcp.spec import TcpSpec
from agent.north.tcp.uplink import TcpUplink

ADAPTERS: dict[type, Any] = {
    MqttUplinkSpec: MqttUplink,
    HttpSpec: lambda spec, ctx: HttpUplink(spec, ctx, ctx.timezone),
    TcpSpec: lambda spec, ctx: TcpUplink(spec, ctx, ctx.timezone),
}


def make_uplink(spec: Any, ctx: UplinkContext) -> Uplink:
    """The uplink for a typed uplink spec (agent/config builds them)."""
    return ADAPTERS[type(spec)](spec, ctx)
