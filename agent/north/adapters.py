"""The uplink protocols, by the protocol of their spec: the only place that names them. A new
north protocol is a folder beside mqtt/ plus one line here."""

from __future__ import annotations

from typing import Any

from agent.north.base import Uplink, UplinkContext
from agent.north.mqtt.spec import MqttSpec
from agent.north.mqtt.uplink import MqttUplink

ADAPTERS: dict[type, Any] = {
    MqttSpec: MqttUplink,
}


def make_uplink(spec: Any, ctx: UplinkContext) -> Uplink:
    """The uplink for a typed uplink spec (agent/config builds them)."""
    return ADAPTERS[type(spec)](spec, ctx)
