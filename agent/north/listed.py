"""The `mqtt` entry of `[[uplinks]]` (`[uplink]` is the one named `mqtt`), typed.

Kept outside agent/north/mqtt/ for now; it belongs in agent/north/mqtt/spec.py beside MqttSpec
(the HTTP and TCP uplinks must not import it: protocols are independent of each other).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.north.mqtt.spec import MqttSpec
from agent.north.templated import BodySpec


@dataclass(frozen=True)
class MqttUplinkSpec:
    """The broker's settings and, given `topic` with `[uplinks.envelope]` and
    `[uplinks.record]`, the templated body published there instead of `hazgate.uplink/1`."""

    name: str
    mqtt: MqttSpec
    topic: str | None = None  # readings (and, without events_topic, events) go here
    body: BodySpec | None = None  # None: hazgate.uplink/1
    events_topic: str | None = None
