"""The MQTT uplink's typed settings (`[uplink]`), as the config hands them over."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from agent.north.templated import BodySpec


def without_credentials(url: str) -> str:
    """The address with everything before its last '@' (a user name, a password) taken out: what
    a log line, an error or `hazgate status` may show."""
    if "@" not in url:
        return url
    scheme, sep, _ = url.partition("://")
    return f"{scheme}{sep}{url.rpartition('@')[2]}" if sep else url.rpartition("@")[2]


@dataclass
class MqttSpec:
    broker: str
    topic_prefix: str = "hazchem"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    publish_interval: float = 1.0
    batch_size: int = 500
    keepalive: float = 30.0

    @property
    def tls(self) -> bool:
        return urlparse(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlparse(self.broker).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.broker).port or (8883 if self.tls else 1883)


@dataclass(frozen=True)
class MqttUplinkSpec:
    """The broker's settings and, given `topic` with `[uplinks.envelope]` and
    `[uplinks.record]`, the templated body published there instead of `hazgate.uplink/1`."""

    name: str
    mqtt: MqttSpec
    topic: str | None = None  # readings (and, without events_topic, events) go here
    body: BodySpec | None = None  # None: hazgate.uplink/1
    events_topic: str | None = None
    registry_topic: str | None = None  # the point registration's topic, when not `topic`

    @property
    def describe(self) -> str:
        """Where it delivers, for status and logs: never a user name or password (the loader
        refuses them in `[uplink]`; an address given another way still never shows one)."""
        return without_credentials(self.mqtt.broker)
