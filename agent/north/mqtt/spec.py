"""The MQTT uplink's typed settings (`[uplink]`), as the config hands them over."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse


@dataclass
class MqttSpec:
    broker: str
    name: str = "mqtt"  # the `[uplink]` table is the uplink named mqtt
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
    def describe(self) -> str:
        """Where it delivers, for status and logs (never a credential)."""
        return self.broker

    @property
    def tls(self) -> bool:
        return urlparse(self.broker).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlparse(self.broker).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.broker).port or (8883 if self.tls else 1883)
