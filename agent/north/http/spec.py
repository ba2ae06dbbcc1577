"""The HTTP uplink's typed settings, as the config hands them over."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from agent.north.ack import AckRule
from agent.north.platform import Delivery
from agent.north.templated import BodySpec


@dataclass(frozen=True)
class Header:
    """One request header: a plain value, or `secret`: the file its value is read from (at
    each connection, never kept in the spec, never logged)."""

    name: str
    value: str | None = field(default=None, repr=False)
    secret: Path | None = None


@dataclass(frozen=True)
class HttpSpec:
    name: str
    url: str  # http:// or https://
    body: BodySpec
    delivery: Delivery = Delivery()
    ack: AckRule = AckRule()
    ca_file: Path | None = None  # trust for the platform's certificate; None: the system CAs
    headers: tuple[Header, ...] = ()
    events_url: str | None = None  # where events go, when not to `url`
    registry_url: str | None = None  # where the point registration goes, when not to `url`

    @property
    def describe(self) -> str:
        """Where it delivers, for status and logs (never a credential)."""
        u = urlparse(self.url)
        return f"{u.scheme}://{u.hostname}:{self.port}{u.path}"

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "https"

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlparse(self.url).port or (443 if self.tls else 80)
