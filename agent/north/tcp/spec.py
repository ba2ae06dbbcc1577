"""The TCP uplink's typed settings, as the config hands them over."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.north.ack import AckRule
from agent.north.platform import Delivery
from agent.north.templated import BodySpec

CONNECTIONS = ("per-message", "persistent")
MAX_REPLY = 1 << 20


@dataclass(frozen=True)
class TcpSpec:
    name: str
    host: str
    port: int
    body: BodySpec
    delivery: Delivery = Delivery()
    ack: AckRule = AckRule()  # without `field`, any reply frame accepts
    delimiter: bytes = b"@@"  # ends every frame, both directions
    connection: str = "per-message"  # per-message | persistent
    tls: bool = False
    ca_file: Path | None = None  # trust for the platform's certificate; None: the system CAs
    max_reply: int = MAX_REPLY  # bytes of one reply frame at most

    @property
    def describe(self) -> str:
        """Where it delivers, for status and logs."""
        return f"{'tls' if self.tls else 'tcp'}://{self.host}:{self.port}"
