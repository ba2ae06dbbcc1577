"""`protocol = "mqtt"`: its keys (`BROKER_KEYS` are also `[uplink]`'s), its spec built from a
checked `[[uplinks]]` table, `hazgate.uplink/1` or, given a topic and templates, a platform's
own body, and its uplink."""

from __future__ import annotations

from agent.north.mqtt.spec import MqttSpec, MqttUplinkSpec
from agent.north.mqtt.uplink import MqttUplink
from agent.north.protocol import UplinkEntry, UplinkProtocol, own_key
from agent.north.templated import TEMPLATED_KEYS

BROKER_KEYS = {
    "broker": ("url:mqtt|mqtts", True), "topic_prefix": ("level", False), "ca_file": ("path", False),
    "cert_file": ("path", False), "key_file": ("path", False), "username": ("str", False),
    "password_file": ("path", False), "publish_interval": ("duration:50ms..1h", False),
    "batch_size": ("int:1..10000", False), "keepalive": ("duration:1s..65535s", False),
}
TEMPLATED = ("topic", "envelope", "record", "events", "declarations", "daily", "registry", "codec", "time_format")


def broker_spec(values: dict) -> MqttSpec:
    """The broker's settings from checked `BROKER_KEYS` values, defaults applied."""
    return MqttSpec(
        broker=values["broker"], topic_prefix=values.get("topic_prefix", "hazchem"),
        ca_file=values.get("ca_file"), cert_file=values.get("cert_file"),
        key_file=values.get("key_file"), username=values.get("username"),
        password_file=values.get("password_file"),
        publish_interval=values.get("publish_interval", 1.0),
        batch_size=values.get("batch_size", 500), keepalive=values.get("keepalive", 30.0))


def _build(e: UplinkEntry, item: dict, values: dict) -> MqttUplinkSpec | None:
    for key in ("key_file", "password_file"):
        if values.get(key) is not None:
            e.secret_text(key, values[key])
    if ("cert_file" in values) != ("key_file" in values):
        e.err(("key_file",), "key_file", "cert_file and key_file go together; give both or "
              "neither")
    templated = any(k in item for k in TEMPLATED)
    body = None
    if templated:
        if "topic" not in values:
            e.err((), "topic", "a templated mqtt uplink needs the topic its messages go to; "
                  "valid: e.g. topic = \"platform/realtime\"")
        body = e.body()
    if not e.clean or (templated and body is None):
        return None
    return MqttUplinkSpec(name=values["name"], mqtt=broker_spec(values), topic=values.get("topic"),
                          body=body, events_topic=own_key(item, "events", "topic"),
                          registry_topic=own_key(item, "registry", "topic"))


MQTT = UplinkProtocol(
    keys={**BROKER_KEYS, **TEMPLATED_KEYS, "topic": ("str", False)},
    build=_build, uplink=MqttUplink, spec_type=MqttUplinkSpec,
    events_keys={"topic": ("str", False)},
    no_cipher="its key_file is the TLS client key")
