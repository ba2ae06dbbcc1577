"""The uplink protocols, by the type of their spec: the only place that names them. A new
north protocol is a folder beside mqtt/, http/ and tcp/ plus one line here."""

from __future__ import annotations

from typing import Any

from agent.north.base import Uplink, UplinkContext
from agent.north.http.spec import HttpSpec
from agent.north.mqtt.spec import MqttUplinkSpec
from agent.north.mqtt.uplink import MqttUplink
from agent.north.tcp.spec import TcpSpec


# Imports in the factories: aiohttp (about 20 MB of a Pi's memory) and the platform links only
# for a gateway that feeds such a platform.
def _http(spec: HttpSpec, ctx: UplinkContext) -> Uplink:
    from agent.north.http.uplink import HttpUplink

    return HttpUplink(spec, ctx, ctx.timezone)


def _tcp(spec: TcpSpec, ctx: UplinkContext) -> Uplink:
    from agent.north.tcp.uplink import TcpUplink

    return TcpUplink(spec, ctx, ctx.timezone)


ADAPTERS: dict[type, Any] = {
    MqttUplinkSpec: MqttUplink,
    HttpSpec: _http,
    TcpSpec: _tcp,
}


def make_uplink(spec: Any, ctx: UplinkContext) -> Uplink:
    """The uplink for a typed uplink spec (agent/config builds them)."""
    return ADAPTERS[type(spec)](spec, ctx)
